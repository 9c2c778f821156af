"""Prompt texts read, at run time, from the installed lm-evaluation-harness task files.

Contract: ``ruler_texts()`` and ``babilong_texts()`` return the RULER / BABILong wording of the
lm-eval that is installed (``lm_eval/tasks/ruler/*.py``, ``lm_eval/tasks/babilong/*.yaml``), in
the placeholder form focusft's generators fill (``prompt_sets.RulerTexts`` /
``BabilongTexts``). Nothing of lm-eval's wording lives in this repository: the files are parsed
(Python with ``ast``, YAML with ``yaml``), never imported, because importing the RULER modules
downloads nltk data and hub data sets. A missing lm-eval, or a file whose layout changed, raises
``LmEvalUnavailable`` naming the file and the piece not found.

What is read, per file:
  ruler/niah_utils.py    ``TEMPLATE`` (NIAH, plural form)
  ruler/prepare_niah.py  ``NEEDLE``; the ``template.replace(a, b)`` calls that make the singular
                         form; the two ``gen_prefix`` f-strings; the "repeat" haystack string
  ruler/vt_utils.py      ``CONFIG["variable_tracking"]`` template and answer prefix
  ruler/cwe_utils.py     ``CONFIG`` template and answer prefix; whether the sample's input
                         carries the worked example
  ruler/fwe_utils.py     ``CONFIG`` template and answer prefix; the noise word (``vocab[0] = ..``)
  ruler/qa_utils.py      ``CONFIG`` template and answer prefix; ``DOCUMENT_PROMPT``
  ruler/*.yaml           ``generation_kwargs.max_gen_toks`` per task
  babilong/babilong_qaN.yaml  ``description``, ``fewshot_config.samples``, ``doc_to_text``;
                         ``_babilong_common_yaml``: ``num_fewshot``, ``target_delimiter``,
                         ``max_gen_toks``
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path


class LmEvalUnavailable(RuntimeError):
    """lm-eval is not installed, or its task files are not laid out as expected."""


def tasks_dir() -> Path:
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise LmEvalUnavailable("lm-evaluation-harness is not installed "
                                "(pip install 'focusft[lm-eval]')")
    root = Path(list(spec.submodule_search_locations)[0]) / "tasks"
    if not (root / "ruler").is_dir() or not (root / "babilong").is_dir():
        raise LmEvalUnavailable(f"the installed lm-eval has no ruler/babilong tasks under {root}")
    return root


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _version

    try:
        return _version("lm_eval")
    except PackageNotFoundError:
        return "unknown"


# --- Python files ----------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _tree(relpath: str) -> ast.Module:
    path = tasks_dir() / relpath
    try:
        return ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError) as err:
        raise LmEvalUnavailable(f"cannot read lm-eval task file {relpath}: {err}") from None


def _missing(relpath: str, what: str) -> LmEvalUnavailable:
    return LmEvalUnavailable(f"lm-eval task file {relpath}: {what} not found (layout changed?)")


def _assigned(relpath: str, name: str) -> ast.expr:
    """The value of the first ``name = ...`` anywhere in the file."""
    for node in ast.walk(_tree(relpath)):
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return node.value
    raise _missing(relpath, f"assignment to {name}")


def string_constant(relpath: str, name: str) -> str:
    value = _assigned(relpath, name)
    if not (isinstance(value, ast.Constant) and isinstance(value.value, str)):
        raise _missing(relpath, f"string constant {name}")
    return value.value


def _config(relpath: str, *keys: str) -> str:
    """``CONFIG[keys[0]][keys[1]]...`` of a module-level dict literal of string constants."""
    node = _assigned(relpath, "CONFIG")
    for key in keys:
        if not isinstance(node, ast.Dict):
            raise _missing(relpath, f"CONFIG{''.join(f'[{k!r}]' for k in keys)}")
        found = [v for k, v in zip(node.keys, node.values)
                 if isinstance(k, ast.Constant) and k.value == key]
        if not found:
            raise _missing(relpath, f"CONFIG key {key!r}")
        node = found[0]
    if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
        raise _missing(relpath, f"string CONFIG{''.join(f'[{k!r}]' for k in keys)}")
    return node.value


def _format_string(node: ast.JoinedStr) -> str:
    """An f-string as a str.format template: every ``{expr}`` becomes ``{its base name}``."""
    out = []
    for part in node.values:
        if isinstance(part, ast.Constant):
            out.append(part.value.replace("{", "{{").replace("}", "}}"))
        else:
            names = [n.id for n in ast.walk(part.value) if isinstance(n, ast.Name)]
            out.append("{" + names[0] + "}")
    return "".join(out)


def _niah_prefixes() -> tuple[str, str]:
    """(singular, plural) answer prefixes: the ``"gen_prefix": a if one value else b`` f-strings."""
    rel = "ruler/prepare_niah.py"
    for node in ast.walk(_tree(rel)):
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if isinstance(k, ast.Constant) and k.value == "gen_prefix" and isinstance(
                        v, ast.IfExp) and isinstance(v.body, ast.JoinedStr) and isinstance(
                        v.orelse, ast.JoinedStr):
                    return _format_string(v.body), _format_string(v.orelse)
    raise _missing(rel, "the gen_prefix f-strings")


def _niah_singular() -> tuple[tuple[str, str], ...]:
    """The ``template = template.replace(a, b)`` chain applied when one value is asked."""
    rel = "ruler/prepare_niah.py"
    pairs = []
    for node in ast.walk(_tree(rel)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "replace" and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "template" and len(node.args) == 2
                and all(isinstance(a, ast.Constant) for a in node.args)):
            pairs.append((node.args[0].value, node.args[1].value))
    if not pairs:
        raise _missing(rel, "the singular template.replace calls")
    return tuple(pairs)


def _repeat_haystack() -> str:
    """The string assigned to ``haystack`` in the ``type_haystack == "repeat"`` branch."""
    rel = "ruler/prepare_niah.py"
    for node in ast.walk(_tree(rel)):
        if isinstance(node, ast.If) and "repeat" in ast.unparse(node.test):
            for stmt in node.body:
                if (isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Constant)
                        and isinstance(stmt.value.value, str)):
                    return stmt.value.value
    raise _missing(rel, "the repeat haystack")


def _fwe_noise_word() -> str:
    rel = "ruler/fwe_utils.py"
    for node in ast.walk(_tree(rel)):
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Subscript)
                and ast.unparse(node.targets[0]) == "vocab[0]"
                and isinstance(node.value, ast.Constant)):
            return node.value.value
    raise _missing(rel, "the noise word assignment vocab[0] = ...")


def _cwe_example_in_input() -> bool:
    """Whether cwe_utils' sample ``"input"`` includes its worked example (0.4.13: it does not;
    ``input_example`` is stored in a field of its own that the task never shows)."""
    rel = "ruler/cwe_utils.py"
    for node in ast.walk(_tree(rel)):
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if isinstance(k, ast.Constant) and k.value == "input":
                    return "input_example" in ast.unparse(v)
    raise _missing(rel, 'the sample dict with an "input" key')


# --- YAML files ------------------------------------------------------------------------------
class _Loader:
    """A yaml SafeLoader that keeps ``!function module.name`` tags as plain strings."""

    @staticmethod
    def make():
        import yaml

        class Loader(yaml.SafeLoader):
            pass

        Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
        return Loader


@functools.lru_cache(maxsize=None)
def _yaml(relpath: str) -> dict:
    import yaml

    path = tasks_dir() / relpath
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader.make())
    except (OSError, yaml.YAMLError) as err:
        raise LmEvalUnavailable(f"cannot read lm-eval task file {relpath}: {err}") from None
    base = data.pop("include", None)
    if base:  # lm-eval's include: the included file's keys, overridden by this file's
        merged = dict(_yaml(str(Path(relpath).parent / base)))
        merged.update(data)
        data = merged
    return data


def _max_gen_toks(relpath: str) -> int:
    try:
        return int(_yaml(relpath)["generation_kwargs"]["max_gen_toks"])
    except (KeyError, TypeError, ValueError):
        raise _missing(relpath, "generation_kwargs.max_gen_toks") from None


RULER_YAML = {"niah_single_1": "niah_single_1.yaml", "vt": "vt.yaml", "cwe": "cwe.yaml",
              "fwe": "fwe.yaml", "qa_1": "qa_squad.yaml", "qa_2": "qa_hotpot.yaml"}


def ruler_fields() -> dict:
    """Keyword arguments of ``prompt_sets.RulerTexts`` for lm-eval's wording."""
    single, plural = _niah_prefixes()
    niah_new = _max_gen_toks("ruler/niah_single_1.yaml")
    return dict(
        niah_template=string_constant("ruler/niah_utils.py", "TEMPLATE"),
        niah_singular=_niah_singular(),
        niah_prefix_single=single, niah_prefix_plural=plural,
        needle=string_constant("ruler/prepare_niah.py", "NEEDLE"),
        repeat_noise=_repeat_haystack(),
        vt_template=_config("ruler/vt_utils.py", "variable_tracking", "template"),
        vt_prefix=_config("ruler/vt_utils.py", "variable_tracking", "answer_prefix").strip(),
        cwe_template=_config("ruler/cwe_utils.py", "template"),
        cwe_prefix=_config("ruler/cwe_utils.py", "answer_prefix").strip(),
        fwe_template=_config("ruler/fwe_utils.py", "template"),
        fwe_prefix=_config("ruler/fwe_utils.py", "answer_prefix").strip(),
        fwe_noise_word=_fwe_noise_word(),
        qa_template=_config("ruler/qa_utils.py", "template"),
        qa_prefix=_config("ruler/qa_utils.py", "answer_prefix").strip(),
        qa_document=string_constant("ruler/qa_utils.py", "DOCUMENT_PROMPT"),
        cwe_example=_cwe_example_in_input(),
        max_new_tokens={"niah": niah_new, **{t: _max_gen_toks(f"ruler/{f}")
                                             for t, f in RULER_YAML.items() if t != "niah_single_1"}},
    )


def babilong_fields(task: str) -> dict:
    """Keyword arguments of ``babilong_prompts.BabilongTask`` for lm-eval's ``babilong_{task}``."""
    rel = f"babilong/babilong_{task}.yaml"
    data = _yaml(rel)
    try:
        n_shot = int(data.get("num_fewshot", 0))
        shots = data["fewshot_config"]["samples"][:n_shot]
        examples = tuple((s["input"], s["question"], s["target"]) for s in shots)
        return dict(instruction=data["description"], examples=examples,
                    doc_to_text=data["doc_to_text"],
                    target_delimiter=data.get("target_delimiter", " "),
                    max_new_tokens=int(data["generation_kwargs"]["max_gen_toks"]))
    except (KeyError, TypeError, ValueError) as err:
        raise _missing(rel, f"field {err}") from None
