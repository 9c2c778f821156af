"""--prompts lm-eval: rendered prompts equal lm-eval's task texts filled with the same fields.

The expected texts are read here from the installed lm-eval task files with plain regular
expressions / yaml (independently of focusft's ast reader), then filled with the fields of the
generated sample.
"""

from __future__ import annotations

import ast
import importlib.util
import random
import re
from pathlib import Path

import pytest
import yaml

from focusft.evaluation.babi import babi_samples
from focusft.evaluation.babilong import babilong_sample
from focusft.evaluation.ruler import ruler_sample

pytestmark = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                                reason="lm-eval not installed")


def task_file(rel: str) -> str:
    root = Path(importlib.util.find_spec("lm_eval").submodule_search_locations[0]) / "tasks"
    return (root / rel).read_text()


def config(rel: str) -> dict:
    """The module-level CONFIG dict literal of a RULER utils file."""
    source = task_file(rel)
    start = source.index("CONFIG = {") + len("CONFIG = ")
    depth, end = 0, start
    for end, ch in enumerate(source[start:], start):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth == 0:
            break
    return ast.literal_eval(source[start:end + 1])


class Loader(yaml.SafeLoader):
    pass


Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def test_niah_plural_prompt_and_prefix():
    s = ruler_sample("niah_multivalue", 4096, None, random.Random(3), prompts="lm-eval")
    literal = re.search(r'TEMPLATE = ("""(?:.|\n)*?""")', task_file("ruler/niah_utils.py")).group(1)
    template = ast.literal_eval(literal)
    lines = s.prompt.split("\n")
    query = re.search(r"for (\S+) mentioned", lines[-1]).group(1)
    context = "\n".join(lines[1:-1])
    assert s.prompt == template.format(type_needle_v="numbers", context=context, query=query)
    fstring = s.answer_prefix.replace(query, "{query}").replace("numbers", "{type_needle_v}")
    assert f'f"{fstring}"' in task_file("ruler/prepare_niah.py")
    assert s.max_new_tokens == 128


def test_niah_singular_form_follows_lm_eval_replacements():
    s = ruler_sample("niah_single_1", 4096, None, random.Random(3), prompts="lm-eval")
    source = task_file("ruler/prepare_niah.py")
    template = ast.literal_eval(re.search(r'TEMPLATE = ("""(?:.|\n)*?""")',
                                          task_file("ruler/niah_utils.py")).group(1))
    for old, new in re.findall(r'template = template\.replace\("([^"]*)", "([^"]*)"\)', source):
        template = template.replace(old, new)
    lines = s.prompt.split("\n")
    query = re.search(r"for (\S+) mentioned", lines[-1]).group(1)
    assert s.prompt == template.format(type_needle_v="number", context="\n".join(lines[1:-1]),
                                       query=query)
    repeat = re.search(r'haystack = "(The grass[^"]*)"', source).group(1)
    assert all(line == repeat for line in lines[1:-1] if not line.startswith("One of"))


@pytest.mark.parametrize("task,rel,key", [("vt", "ruler/vt_utils.py", "variable_tracking"),
                                          ("cwe", "ruler/cwe_utils.py", None),
                                          ("fwe", "ruler/fwe_utils.py", None),
                                          ("qa_1", "ruler/qa_utils.py", None)])
def test_ruler_templates_and_prefixes(task, rel, key):
    s = ruler_sample(task, 4096, None, random.Random(5), prompts="lm-eval")
    cfg = config(rel)
    cfg = cfg[key] if key else cfg
    head, tail = cfg["template"].split("{context}")
    at = s.prompt.rindex(head[:40]) if task == "vt" else 0  # after VT's worked example
    if task == "cwe":  # lm-eval's CWE input has no worked example (RULER's has one)
        assert s.prompt.count(head[:40]) == 1
    body = s.prompt[at:]
    context = body[len(head):body.rindex(tail.split("{")[0])]
    fields = {"context": context}
    if task == "vt":
        fields.update(query=re.search(r"value (\d+) in the text above\.$", body).group(1), num_v=5)
    if task == "qa_1":
        fields["query"] = body.rsplit("Question: ", 1)[1]
    assert body == cfg["template"].format(**fields)
    assert s.answer_prefix == cfg["answer_prefix"].format(**fields).strip()
    yaml_name = {"vt": "vt.yaml", "cwe": "cwe.yaml", "fwe": "fwe.yaml", "qa_1": "qa_squad.yaml"}
    data = yaml.load(task_file(f"ruler/{yaml_name[task]}"), Loader=Loader)
    assert s.max_new_tokens == data["generation_kwargs"]["max_gen_toks"]


@pytest.mark.parametrize("task", ["qa1", "qa3", "qa5"])
def test_babilong_prompt_is_lm_eval_fewshot_context(task):
    data = yaml.load(task_file(f"babilong/babilong_{task}.yaml"), Loader=Loader)
    common = yaml.load(task_file("babilong/_babilong_common_yaml"), Loader=Loader)
    b = babi_samples(task, 3, 0)[-1]
    s = babilong_sample(b, "1k", None, None, random.Random(0), prompts="lm-eval")
    shots = data["fewshot_config"]["samples"][:common["num_fewshot"]]
    expected = "".join(f"{x['input'].strip()}\n{x['question'].strip()}"
                       f"{common['target_delimiter']}{x['target']}\n\n" for x in shots)
    expected += f"{s.context.strip()}\n{b.question}"
    assert s.system == data["description"] and s.prompt == expected
    assert s.max_new_tokens == common["generation_kwargs"]["max_gen_toks"]
    # The training target follows the examples' format, and the scorer accepts it.
    from focusft.evaluation.scoring import babilong_correct

    assert babilong_correct(s.target, b.answer, b.question, task)
    if task == "qa1":
        assert s.target.endswith(f" {b.answer}.") and b.question.split()[-1][:-1] in s.target


def test_data_command_writes_lm_eval_rows(tmp_path):
    import json

    from focusft.cli import main

    out = tmp_path / "b.jsonl"
    assert main(["data", "babilong", "--prompts", "lm-eval", "--tasks", "qa2", "--lengths", "0k",
                 "--samples", "2", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    system = yaml.load(task_file("babilong/babilong_qa2.yaml"), Loader=Loader)["description"]
    for r in rows:
        assert [m["role"] for m in r["messages"]] == ["system", "user", "assistant"]
        assert r["messages"][0]["content"] == system and r["prompts"] == "lm-eval"
        assert r["messages"][2]["content"].endswith(f" {r['target']}.")  # "The milk is in the X."


def test_missing_lm_eval_is_a_user_error(tmp_path, capsys, monkeypatch):
    from focusft.cli import main
    from focusft.evaluation import lm_eval_tasks, prompt_sets

    def absent():
        raise lm_eval_tasks.LmEvalUnavailable("lm-evaluation-harness is not installed")

    monkeypatch.setattr(lm_eval_tasks, "tasks_dir", absent)
    for cached in (prompt_sets.ruler_texts, prompt_sets.babilong_task, lm_eval_tasks._tree,
                   lm_eval_tasks._yaml):
        cached.cache_clear()
    try:
        code = main(["data", "ruler", "--prompts", "lm-eval", "--tasks", "vt", "--lengths", "2k",
                     "--samples", "1", "--out", str(tmp_path / "r.jsonl")])
        assert code == 2 and "--prompts lm-eval" in capsys.readouterr().err
        assert not (tmp_path / "r.jsonl").exists()
    finally:
        monkeypatch.undo()
        for cached in (prompt_sets.ruler_texts, prompt_sets.babilong_task, lm_eval_tasks._tree,
                       lm_eval_tasks._yaml):
            cached.cache_clear()
