"""`focusft eval`: score checkpoints on BABILong, RULER and agentic long-context suites, offline.

For every model, task and length, test-split samples are generated for *that model's*
tokenizer (lengths are counted in its tokens: BABILong's 1000-based noise budget, RULER's
1024-based whole input including the chat template's tokens), in the chosen prompt set
(``focusft`` or ``lm-eval``, read from the installed lm-eval), rendered with the model's chat
template (or none: ``--chat_template none``, RULER's base-model default) and opened with the
task's answer prefix (``evaluation.render``), decoded greedily with a KV cache for the task's
number of new tokens, and scored with the official rules (`focusft.evaluation.scoring`):
BABILong's leaderboard label rule, RULER's string_match_all / string_match_part, normalised
exact match for the agentic suite. Each cell carries a 95 % Wilson interval. Each model runs
under one or both inference masks (`focusft.evaluation.inference`): ``causal`` (ordinary) and ``prefix``
(the prompt prefilled under the training mask).

``scoring="loglik"`` (closed answer sets: BABILong qa1-qa5, agentic compare) scores instead,
lm-evaluation-harness's way, every candidate answer's log-likelihood after the prompt
(`focusft.evaluation.loglik`, `focusft.evaluation.choices`): acc, acc_norm, gold NLL per cell.
Several models (or masks) are compared pairwise on the rows they share
(`focusft.evaluation.paired`: bootstrap intervals of the paired difference, McNemar's exact p).

Outputs (written to a temporary directory, then renamed into place)::

    out/results.json        scores, intervals, settings (prompt set, noise source, length
                            convention, tokenizer, chat template) and per-sample records
                            (prompt, references, output, score)
    out/results.md          the settings, then task x length, models (and masks) side by side
    out/accuracy.png        mean accuracy over tasks vs length, one line per model and mask
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from focusft.errors import UserError
from focusft.evaluation.render import generation_text

DEFAULT_LENGTHS = {"babilong": ["0k", "1k", "2k", "4k"], "ruler": ["4k"],
                   "agentic": ["1k", "2k", "4k"]}


@dataclass
class EvalSpec:
    suite: str = "babilong"
    tasks: list[str] = field(default_factory=lambda: ["qa1", "qa2", "qa3", "qa4", "qa5"])
    lengths: list[str] = field(default_factory=lambda: ["0k", "1k", "2k", "4k"])
    samples: int = 20
    seed: int = 0
    masks: list[str] = field(default_factory=lambda: ["causal"])
    batch_size: int = 8
    haystack: str | None = "procedural"  # the CLI's default is "auto" (books when present)
    few_shot: bool = True
    trust_remote_code: bool = False
    prompts: str = "focusft"  # "focusft" | "lm-eval"
    chat_template: bool = True  # False: the plain text (base models)
    scoring: str = "generate"  # "generate" (greedy, the suite's rule) | "loglik" (closed sets)


def load_checkpoint(path: str, trust_remote_code: bool = False, need_template: bool = True):
    """A saved causal LM and its tokenizer (safetensors only; remote code only if asked); a GGUF
    file, dequantized; a PEFT adapter directory, merged into its base."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not Path(path).exists():
        raise UserError(f"--model {path}: no such directory")
    from focusft.sources import adapter_dir, gguf_file
    from focusft.sources.model_dir import check_model_dir, load_tokenizer

    check_model_dir(path, "--model")
    if (file := gguf_file.find(path, "--model")) is not None:
        model, tokenizer, _ = gguf_file.load(file, "float32", "--model")
        return _ready(model, tokenizer, path, need_template)
    if adapter_dir.is_adapter_dir(path):  # a --use_peft run's final/: measured merged
        tokenizer = load_tokenizer(path, "--model")
        return _ready(adapter_dir.load_merged(path), tokenizer, path, need_template)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True,
                                                     trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise UserError(f"--model {path}: cannot load a causal LM and tokenizer: "
                        f"{str(err).splitlines()[0]}") from None
    return _ready(model, tokenizer, path, need_template)


def _ready(model, tokenizer, path: str, need_template: bool):
    if need_template and tokenizer.chat_template is None:
        raise UserError(f"--model {path}: the tokenizer has no chat template (base model? use "
                        "--chat_template none)")
    return model.eval(), tokenizer


def stop_token_ids(tokenizer) -> list[int]:
    """End-of-turn ids: eos plus the usual chat end markers present in the vocabulary."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for marker in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<end_of_turn>"):
        tid = tokenizer.convert_tokens_to_ids(marker)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return sorted(ids)


def make_rows(spec: EvalSpec, tokenizer) -> list[dict]:
    from focusft.evaluation.chat import make_chat_rows
    from focusft.evaluation.lm_eval_tasks import LmEvalUnavailable

    try:
        if spec.suite == "agentic":
            from focusft.evaluation.agentic import agentic_rows

            return agentic_rows(spec.tasks, spec.lengths, spec.samples, spec.seed, "test",
                                tokenizer, spec.haystack)
        return make_chat_rows(spec.suite, spec.tasks, spec.lengths, spec.samples, spec.seed,
                              split="test", tokenizer=tokenizer, haystack=spec.haystack,
                              few_shot=spec.few_shot, prompts=spec.prompts,
                              chat_template=spec.chat_template)
    except LmEvalUnavailable as err:
        raise UserError(f"--prompts lm-eval: {err}") from None
    except ValueError as err:
        raise UserError(f"--suite {spec.suite} --tasks {','.join(spec.tasks)}: {err}") from None


def prompt_text(tokenizer, row: dict, chat_template: bool = True) -> str:
    return generation_text(tokenizer, row["messages"], row.get("answer_prefix", ""),
                           chat_template, row.get("tools"))


def response_mask(tokenizer, row: dict, prompt: list[int], chat_template: bool) -> list[int]:
    """1 on the prompt tokens that are assistant content (earlier tool-call turns, the answer
    prefix), as in training: the ``prefix`` inference mask keeps them causal (response blocks).
    """
    prefix = row.get("answer_prefix", "")
    if not chat_template:  # plain text: only the answer prefix is the response
        head = generation_text(tokenizer, row["messages"], "", False)
        n = len(tokenizer(head, add_special_tokens=False)["input_ids"]) if prefix else len(prompt)
        return [0] * n + [1] * (len(prompt) - n)
    from focusft.data.pipeline import tokenize_conversation
    from focusft.evaluation.render import context_messages

    conversation = context_messages(row["messages"]) + [
        {"role": "assistant", "content": prefix.strip() or "x"}]
    ids, mask = tokenize_conversation(tokenizer, conversation, row.get("tools"))
    if ids[:len(prompt)] != list(prompt):  # the template re-renders the open turn differently
        raise UserError("the chat template renders the answer prefix differently in a finished "
                        "turn; use --mask causal or --chat_template none")
    return list(mask[:len(prompt)])


def generate_outputs(model, tokenizer, rows: list[dict], spec: EvalSpec, mode: str,
                     progress: str = "", generate=None) -> list[str]:
    """Greedy outputs for `rows`, batched by similar prompt length. ``generate`` defaults to
    ``inference.greedy_generate`` (same signature; tests pass a stand-in). Under the ``prefix``
    mask, assistant tokens in the prompt are marked (``response_mask``)."""
    from tqdm.auto import tqdm

    if generate is None:
        from focusft.evaluation.inference import greedy_generate as generate

    texts = [prompt_text(tokenizer, r, spec.chat_template) for r in rows]
    prompts = [tokenizer(t, add_special_tokens=False, verbose=False)["input_ids"] for t in texts]
    order = sorted(range(len(rows)), key=lambda i: (len(prompts[i]), i))
    outputs: list[str] = [""] * len(rows)
    stops, pad = stop_token_ids(tokenizer), tokenizer.pad_token_id or 0
    batches = [order[i:i + spec.batch_size] for i in range(0, len(order), spec.batch_size)]
    for batch in tqdm(batches, desc=progress, leave=False):
        new = max(rows[i]["max_new_tokens"] for i in batch)
        masks = None if mode == "causal" else [
            response_mask(tokenizer, rows[i], prompts[i], spec.chat_template) for i in batch]
        gen = generate(model, [prompts[i] for i in batch], new, pad, stops, mode,
                       prompt_loss_masks=masks)
        for i, tokens in zip(batch, gen):
            outputs[i] = tokenizer.decode(tokens[:rows[i]["max_new_tokens"]],
                                          skip_special_tokens=True)
    return outputs


def sample_records(rows: list[dict], outputs: list[str], prompts: list[str]) -> list[dict]:
    """Per-sample records: the rendered prompt, references, output and score."""
    from focusft.evaluation.scoring import sample_score

    return [{"task": r["task"], "length": r["length"], "prompt": p, "references": r["references"],
             "target": r["target"], "output": o,
             "score": sample_score(r["metric"], o, r["references"], r["question"], r["task"])}
            for r, o, p in zip(rows, outputs, prompts)]


def row_keys(rows: list[dict]) -> list[str]:
    """A row's identity across models: task, length and its index among that cell's rows (every
    model's rows are drawn from the same samples, whatever its tokenizer)."""
    seen: dict = defaultdict(int)
    keys = []
    for r in rows:
        keys.append(f"{r['task']}|{r['length']}|{seen[(r['task'], r['length'])]}")
        seen[(r["task"], r["length"])] += 1
    return keys


def loglik_records(model, tokenizer, rows: list[dict], prompts: list[str], spec: EvalSpec,
                   mode: str, progress: str = "") -> list[dict]:
    """Per-row likelihood records (`focusft.evaluation.loglik`), ``score`` = acc."""
    from focusft.evaluation.loglik import score_rows

    ids = [tokenizer(t, add_special_tokens=False, verbose=False)["input_ids"] for t in prompts]
    masks = None if mode == "causal" else [
        response_mask(tokenizer, r, p, spec.chat_template) for r, p in zip(rows, ids)]
    scored = score_rows(model, tokenizer, rows, prompts, mode, masks, progress)
    return [{"task": r["task"], "length": r["length"], "key": k, "prompt": p,
             "references": r["references"], "target": r["target"], "output": s["prediction"],
             "score": s["acc"], **s} for r, k, p, s in zip(rows, row_keys(rows), prompts, scored)]


def check_closed(rows: list[dict], spec: EvalSpec) -> None:
    """--scoring loglik needs every row's task to have a closed answer set."""
    from focusft.evaluation.choices import row_choices

    open_tasks = sorted({r["task"] for r in rows if row_choices(r) is None})
    if open_tasks:
        raise UserError(f"--scoring loglik: {spec.suite} task(s) {', '.join(open_tasks)} have no "
                        "closed answer set (BABILong qa1-qa5 and agentic compare do); score them "
                        "with --scoring generate")


def metric_means(records: list[dict], metric: str) -> dict:
    """{task: {length: mean of ``metric``}} over records."""
    groups = defaultdict(list)
    for rec in records:
        groups[(rec["task"], rec["length"])].append(rec[metric])
    out: dict = defaultdict(dict)
    for (task, length), values in sorted(groups.items()):
        out[task][length] = sum(values) / len(values)
    return dict(out)


def score_records(records: list[dict]) -> tuple[dict, dict, dict]:
    """(scores 0-100, 95 % Wilson intervals 0-100, sample counts) per task and length."""
    from focusft.evaluation.scoring import wilson_interval

    groups = defaultdict(list)
    for rec in records:
        groups[(rec["task"], rec["length"])].append(rec["score"])
    scores, intervals, counts = defaultdict(dict), defaultdict(dict), defaultdict(dict)
    for (task, length), values in sorted(groups.items()):
        mean = sum(values) / len(values)
        lo, hi = wilson_interval(mean, len(values))
        scores[task][length] = 100.0 * mean
        intervals[task][length] = [round(100 * lo, 1), round(100 * hi, 1)]
        counts[task][length] = len(values)
    return dict(scores), dict(intervals), dict(counts)


def settings(spec: EvalSpec, tokenizer, path: str) -> dict:
    """What a reader needs to compare the numbers: prompt set, noise, lengths, tokenizer."""
    from focusft.evaluation.haystack import describe_haystack
    from focusft.evaluation.prompt_sets import describe

    lengths = {"babilong": "BABILong, 1000-based: noise + facts = length - 300 tokens "
                           "(1k -> 700); prompt and chat template on top",
               "ruler": "RULER, 1024-based: the whole input (chat template, prompt, answer "
                        "prefix) + max_new_tokens <= length",
               "agentic": "1024-based: the rendered conversation (chat template, tools "
                          "schema, tool results) + max_new_tokens <= length"}[spec.suite]
    scoring = {"babilong": "BABILong leaderboard rule (label found, alone, outside the question)",
               "ruler": "RULER string_match_all (NIAH, VT, CWE, FWE) / string_match_part (QA)",
               "agentic": "normalised exact match of the final answer's first line"}[spec.suite]
    if spec.scoring == "loglik":
        scoring = ("log-likelihood over the task's closed answer set: acc (argmax of the summed "
                   "log-probability), acc_norm (divided by the answer's characters), gold NLL")
    return {"prompt_set": describe(spec.prompts) if spec.suite != "agentic" else "focusft",
            "noise": describe_haystack(spec.haystack), "lengths": lengths, "scoring": scoring,
            "tokenizer": f"{type(tokenizer).__name__} of {Path(path).name} "
                         f"(vocabulary {len(tokenizer)})",
            "chat_template": "the model's" if spec.chat_template else "none (plain text)",
            "decoding": ("log-likelihood of each closed-set candidate after the prompt (lm-eval "
                         "multiple_choice: acc, acc_norm by characters), one prefill + KV cache"
                         if spec.scoring == "loglik" else
                         "greedy, KV cache, the task's max_new_tokens, from the answer prefix"),
            "interval": "95 % Wilson score interval"}


def evaluate(models: list[str], spec: EvalSpec, generate=None) -> dict:
    """Scores of every model under every requested mask (see module docstring)."""
    results = {"spec": asdict(spec), "models": {}}
    for path in models:
        model, tokenizer = load_checkpoint(path, spec.trust_remote_code, spec.chat_template)
        if "prefix" in spec.masks:  # prefilled under the training mask: focusft's attention
            from focusft.core.selfcheck import check_attention

            check_attention(model, "glm", where=f"--model {path}: ")
        rows = make_rows(spec, tokenizer)
        if spec.scoring == "loglik":
            check_closed(rows, spec)
        prompts = [prompt_text(tokenizer, r, spec.chat_template) for r in rows]
        results.setdefault("settings", settings(spec, tokenizer, path))
        note_weights(results, path)
        for mode in spec.masks:
            start, label = time.perf_counter(), f"{Path(path).name} [{mode}]"
            if spec.scoring == "loglik":
                records = loglik_records(model, tokenizer, rows, prompts, spec, mode, label)
            else:
                outputs = generate_outputs(model, tokenizer, rows, spec, mode, label, generate)
                records = [{**rec, "key": k} for rec, k in
                           zip(sample_records(rows, outputs, prompts), row_keys(rows))]
            scores, intervals, counts = score_records(records)
            entry = {"scores": scores, "intervals": intervals, "counts": counts,
                     "seconds": round(time.perf_counter() - start, 1), "samples": records}
            if spec.scoring == "loglik":
                entry.update(acc_norm=metric_means(records, "acc_norm"),
                             gold_nll=metric_means(records, "gold_nll"))
            results["models"][f"{path} [{mode}]"] = entry
    if len(results["models"]) > 1:
        from focusft.evaluation.paired import comparison_table

        metrics = ("acc", "gold_nll") if spec.scoring == "loglik" else ("score",)
        results["comparison"] = comparison_table(
            {name: m["samples"] for name, m in results["models"].items()}, metrics)
    return results


def note_weights(results: dict, path: str) -> None:
    """Say in the settings what the weights of `path` are when it records it (e.g. a 4-bit
    quantization dequantized: a GGUF file, or a base obtained by `focusft model get`)."""
    from focusft.sources.pretrained import provenance

    note = provenance(path)
    if note:
        previous = results["settings"].get("weights")
        entry = f"{path}: {note}"
        results["settings"]["weights"] = f"{previous}; {entry}" if previous else entry


def _cell(entry: dict, task: str, length) -> str:
    value = entry["scores"].get(task, {}).get(length)
    if value is None:
        return "-"
    lo, hi = entry.get("intervals", {}).get(task, {}).get(length, (None, None))
    return f"{value:.1f}" if lo is None else f"{value:.1f} [{lo:.0f}, {hi:.0f}]"


def _mean_cell(entry: dict) -> str:
    from focusft.evaluation.scoring import wilson_interval

    values = [v for per_len in entry["scores"].values() for v in per_len.values()]
    counts = [c for per_len in entry.get("counts", {}).values() for c in per_len.values()]
    mean = sum(values) / max(1, len(values))
    if not counts:
        return f"{mean:.1f}"
    lo, hi = wilson_interval(mean / 100, sum(counts))
    return f"{mean:.1f} [{100 * lo:.0f}, {100 * hi:.0f}]"


def markdown_table(results: dict) -> str:
    names = list(results["models"])
    lines = [f"- {k.replace('_', ' ')}: {v}" for k, v in results.get("settings", {}).items()]
    lines += ["", "Cells: score (0-100) [95 % interval]."] if lines else []
    keys = sorted({(t, n) for m in results["models"].values() for t, ls in m["scores"].items()
                   for n in ls})
    lines += ["", "| task | length | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for task, length in keys:
        cells = [_cell(results["models"][m], task, length) for m in names]
        lines.append(f"| {task} | {length} | " + " | ".join(cells) + " |")
    means = [_mean_cell(results["models"][m]) for m in names]
    lines.append("| **mean** | all | " + " | ".join(means) + " |")
    for metric, title, fmt in (("acc_norm", "acc_norm (0-100)", "{:.1f}"),
                               ("gold_nll", "gold NLL (nats per token)", "{:.3f}")):
        if all(metric in results["models"][m] for m in names) and names:
            lines += ["", f"{title}:", "", "| task | length | " + " | ".join(names) + " |",
                      "|---|---|" + "---|" * len(names)]
            for task, length in keys:
                cells = [results["models"][m][metric].get(task, {}).get(length) for m in names]
                cells = [fmt.format(100 * c if metric == "acc_norm" else c)
                         if c is not None else "-" for c in cells]
                lines.append(f"| {task} | {length} | " + " | ".join(cells) + " |")
    text = "\n".join(lines).lstrip("\n") + "\n"
    if results.get("comparison"):
        from focusft.evaluation.paired import comparison_markdown

        text += "\n" + comparison_markdown(results["comparison"])
    return text


def plot_accuracy(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, entry in results["models"].items():
        per_len = defaultdict(list)
        for per_task in entry["scores"].values():
            for length, value in per_task.items():
                per_len[int(length)].append(value)
        xs = sorted(per_len)
        ax.plot(range(len(xs)), [sum(per_len[x]) / len(per_len[x]) for x in xs], marker="o",
                label=name)
        ax.set_xticks(range(len(xs)), [f"{x // 1024}k" if x >= 1024 else str(x) for x in xs])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("accuracy (%), mean over tasks")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(results: dict, out_dir: str) -> Path:
    """results.json, results.md and accuracy.png into `out_dir`, atomically."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    (tmp / "results.json").write_text(json.dumps(results, indent=2))
    (tmp / "results.md").write_text(markdown_table(results))
    plot_accuracy(results, tmp / "accuracy.png")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
