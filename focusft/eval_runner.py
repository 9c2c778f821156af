"""`focusft eval`: score checkpoints on BABILong- / RULER-style suites, offline.

For every model, task and length, test-split samples are generated for *that model's*
tokenizer (lengths are counted in its tokens), rendered with its chat template (one user turn,
then the generation prompt), decoded greedily with a KV cache, and scored with the official
rules (`focusft.evaluation.scoring`): BABILong's label rule, RULER's string_match_all /
string_match_part. Each model runs under one or both inference masks (`focusft.inference`):
``causal`` (ordinary) and ``prefix`` (the prompt prefilled under the training mask).

Outputs (written to a temporary directory, then renamed into place)::

    out/results.json        every score, plus per-sample outputs and the exact settings
    out/results.md          task x length table, models (and masks) side by side
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

from .errors import UserError

MAX_NEW_TOKENS = {"babilong": 20, "vt": 30, "cwe": 120, "fwe": 50, "qa_1": 32, "qa_2": 32}
NIAH_NEW_TOKENS = 128


@dataclass
class EvalSpec:
    suite: str = "babilong"
    tasks: list[str] = field(default_factory=lambda: ["qa1", "qa2", "qa3", "qa4", "qa5"])
    lengths: list[str] = field(default_factory=lambda: ["0k", "1k", "2k", "4k"])
    samples: int = 20
    seed: int = 0
    masks: list[str] = field(default_factory=lambda: ["causal"])
    batch_size: int = 8
    haystack: str | None = None
    few_shot: bool = True
    trust_remote_code: bool = False


def load_checkpoint(path: str, trust_remote_code: bool = False):
    """A saved causal LM and its tokenizer (safetensors only; remote code only if asked)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not Path(path).exists():
        raise UserError(f"--model {path}: no such directory")
    from .model_dir import check_model_dir

    check_model_dir(path, "--model")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True,
                                                     trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise UserError(f"--model {path}: cannot load a causal LM and tokenizer: "
                        f"{str(err).splitlines()[0]}") from None
    if tokenizer.chat_template is None:
        raise UserError(f"--model {path}: the tokenizer has no chat template")
    return model.eval(), tokenizer


def stop_token_ids(tokenizer) -> list[int]:
    """End-of-turn ids: eos plus the usual chat end markers present in the vocabulary."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for marker in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<end_of_turn>"):
        tid = tokenizer.convert_tokens_to_ids(marker)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return sorted(ids)


def max_new_tokens(suite: str, task: str) -> int:
    if suite == "babilong":
        return MAX_NEW_TOKENS["babilong"]
    return MAX_NEW_TOKENS.get(task, NIAH_NEW_TOKENS)


def make_rows(spec: EvalSpec, tokenizer) -> list[dict]:
    from .evaluation.chat import make_chat_rows

    try:
        return make_chat_rows(spec.suite, spec.tasks, spec.lengths, spec.samples, spec.seed,
                              split="test", tokenizer=tokenizer, haystack=spec.haystack,
                              few_shot=spec.few_shot)
    except ValueError as err:
        raise UserError(f"--suite {spec.suite} --tasks {','.join(spec.tasks)}: {err}") from None


def encode_prompt(tokenizer, row: dict) -> list[int]:
    text = tokenizer.apply_chat_template(row["messages"][:1], tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def generate_outputs(model, tokenizer, rows: list[dict], spec: EvalSpec, mode: str,
                     progress: str = "") -> list[str]:
    """Greedy outputs for `rows`, batched by similar prompt length."""
    from tqdm.auto import tqdm

    from .inference import greedy_generate

    prompts = [encode_prompt(tokenizer, r) for r in rows]
    order = sorted(range(len(rows)), key=lambda i: (len(prompts[i]), i))
    outputs: list[str] = [""] * len(rows)
    stops, pad = stop_token_ids(tokenizer), tokenizer.pad_token_id or 0
    batches = [order[i:i + spec.batch_size] for i in range(0, len(order), spec.batch_size)]
    for batch in tqdm(batches, desc=progress, leave=False):
        new = max(max_new_tokens(spec.suite, rows[i]["task"]) for i in batch)
        gen = greedy_generate(model, [prompts[i] for i in batch], new, pad, stops, mode)
        for i, tokens in zip(batch, gen):
            outputs[i] = tokenizer.decode(tokens, skip_special_tokens=True)
    return outputs


def score_rows(rows: list[dict], outputs: list[str]) -> dict[str, dict[int, float]]:
    """Accuracy (0-100) per task and length, by each suite's official rule."""
    from .evaluation.scoring import babilong_correct, ruler_score

    groups = defaultdict(list)
    for row, out in zip(rows, outputs):
        groups[(row["task"], row["length"])].append((row, out))
    scores: dict[str, dict[int, float]] = defaultdict(dict)
    for (task, length), items in sorted(groups.items()):
        if items[0][0]["metric"] == "babilong":
            ok = [babilong_correct(o, r["target"], r["question"], task) for r, o in items]
            scores[task][length] = 100.0 * sum(ok) / len(ok)
        else:
            scores[task][length] = ruler_score(items[0][0]["metric"], [o for _, o in items],
                                               [r["references"] for r, _ in items])
    return dict(scores)


def evaluate(models: list[str], spec: EvalSpec) -> dict:
    """Scores of every model under every requested mask (see module docstring)."""
    results = {"spec": asdict(spec), "models": {}}
    for path in models:
        model, tokenizer = load_checkpoint(path, spec.trust_remote_code)
        rows = make_rows(spec, tokenizer)
        for mode in spec.masks:
            start = time.perf_counter()
            outputs = generate_outputs(model, tokenizer, rows, spec, mode, f"{Path(path).name} [{mode}]")
            results["models"][f"{path} [{mode}]"] = {
                "scores": score_rows(rows, outputs), "seconds": round(time.perf_counter() - start, 1),
                "samples": [{"task": r["task"], "length": r["length"], "target": r["target"],
                             "output": o} for r, o in zip(rows, outputs)],
            }
    return results


def markdown_table(results: dict) -> str:
    names = list(results["models"])
    keys = sorted({(t, n) for m in results["models"].values() for t, ls in m["scores"].items() for n in ls})
    lines = ["| task | length | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for task, length in keys:
        cells = [results["models"][m]["scores"].get(task, {}).get(length) for m in names]
        lines.append(f"| {task} | {length} | " + " | ".join(
            "-" if c is None else f"{c:.1f}" for c in cells) + " |")
    means = [_mean_over(results["models"][m]["scores"]) for m in names]
    lines.append("| **mean** | all | " + " | ".join(f"{x:.1f}" for x in means) + " |")
    return "\n".join(lines) + "\n"


def _mean_over(scores: dict) -> float:
    values = [v for per_len in scores.values() for v in per_len.values()]
    return sum(values) / max(1, len(values))


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
