"""Next-token pretraining of the embedded default model (`focusft pretrain`), in named recipes.

The paper's SFT starts from a pretrained LM whose attention has sinks (most of the attention
of most heads on the first token). A from-scratch tiny model has none, so FocuSFT's claim
(sink mass cut during training) cannot be tested on it. A recipe here makes a base:

* data (`focusft.experiments.pretrain_data`): rows of ``seq_len`` tokens, each opening with a BOS token,
  mixed from book prose (the haystack books, or procedural prose), train-split bAbI stories
  with sentence answers, train-split RULER NIAH / VT / CWE prompts with answers, and sparse
  key-value copy segments. The hypothesis: retrieval segments make heads that idle on plain
  text, which is what sinks are made of (the active-dormant mechanism, see pretrain_data);
  measured on this 6-layer model, it does not hold past the first few hundred steps.
* model: `default.build_default_model` (a tiny Qwen2) with the BOS token added to its vocabulary
  and to the chat template (`pretrain_data.with_bos`), plain causal attention.
* loop: AdamW (decoupled weight decay on matrices only), linear warm-up then cosine decay,
  gradient-norm clip 1.0, next-token loss on every token after the BOS.
* sinks (`focusft.experiments.pretrain_sinks`): first-token attention mass per layer, as a multiple of the
  uniform share, every ``sink_every`` steps, on fixed probe rows (`probe_rows`: book prose and
  bAbI stories, the same rows for every recipe); written to pretrain.json
  (``sinks``) and plotted (sinks.png).
* output: a plain Hugging Face checkpoint (safetensors) + the tokenizer + pretrain.json, written
  to a temporary directory and renamed into place.

``RECIPES`` holds the named recipes (their measured sink ratios: docs/sinks.md); a recipe's
fields can be overridden one by one (``--steps`` etc.).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from focusft.errors import UserError

BOOKS = "../shared/data/haystack"  # BABILong-style book noise, relative to the project root
PROBE_MIX = {"book": 0.5, "babi": 0.5}
PROBE_SEED = 7919
MIX_SPARSE = {"book": 0.35, "babi": 0.2, "ruler": 0.1, "copy": 0.15, "repeat": 0.2}


@dataclass
class PretrainConfig:
    output_dir: str
    recipe: str = "sinks"
    steps: int = 1200
    seq_len: int = 512
    batch_size: int = 8
    learning_rate: float = 3e-3
    warmup: int = 60
    weight_decay: float = 0.1
    seed: int = 0
    heads: int = 4  # attention heads per layer (hidden 128; the embedded default has 4)
    haystack: str | None = None  # None: the books if present, else procedural prose
    mix: dict = field(default_factory=lambda: dict(MIX_SPARSE))
    bos: bool = True
    ruler_len: int = 448  # tokens per RULER segment
    sink_every: int = 100  # steps between sink measurements (0: only at the end)
    sink_rows: int = 4
    log_every: int = 25


# Named recipes: overrides of the PretrainConfig defaults ("sinks" is the default itself).
RECIPES: dict[str, dict] = {
    "sinks": {},
    "prose": dict(mix={"book": 1.0}, weight_decay=0.01),
    "prose-wd": dict(mix={"book": 1.0}),
    "sparse-nobos": dict(bos=False),
    "sparse-lowwd": dict(weight_decay=0.01),
    "bigram": dict(mix={"book": 0.3, "babi": 0.15, "ruler": 0.05, "copy": 0.1, "repeat": 0.1,
                        "bigram": 0.3}),
    "bigram-heavy": dict(mix={"book": 0.15, "babi": 0.1, "copy": 0.1, "bigram": 0.65}),
    "bigram-pure": dict(mix={"bigram": 1.0}),  # only Bigram-Backcopy: the active-dormant control
}


def recipe_config(name: str, output_dir: str, **overrides) -> PretrainConfig:
    if name not in RECIPES:
        raise UserError(f"--recipe {name!r}: unknown; expected one of {', '.join(RECIPES)}")
    cfg = replace(PretrainConfig(output_dir=output_dir, recipe=name), **RECIPES[name])
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


def resolve_haystack(spec: str | None) -> str | None:
    if spec is not None:
        return spec
    return BOOKS if Path(BOOKS).is_dir() else None


def lr_at(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.learning_rate * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.learning_rate * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _validate(cfg: PretrainConfig, out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--output_dir {out} exists and is not empty; choose a new directory")
    if cfg.steps < 1 or cfg.seq_len < 16 or cfg.batch_size < 1:
        raise UserError("--steps and --batch_size must be >= 1 and --seq_len >= 16")


def _optimizer(model, cfg: PretrainConfig):
    import torch

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.learning_rate)


def _step(model, opt, ids, lr: float) -> float:
    import torch

    for group in opt.param_groups:
        group["lr"] = lr
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()


def probe_rows(tokenizer, seq_len: int, n: int, haystack=None) -> list[list[int]]:
    """The rows every recipe's sinks are measured on: BOS, then book prose and bAbI stories
    (the text the SFT tasks are made of), from a seed no recipe trains on; the same for every
    recipe, so their ratios compare."""
    from focusft.experiments.pretrain_data import token_rows

    rows = token_rows(tokenizer, seq_len, PROBE_SEED, PROBE_MIX, haystack, True)
    return [next(rows) for _ in range(n)]


def build_model(tokenizer, cfg: PretrainConfig):
    """The embedded default's tiny Qwen2 (with `cfg.heads` heads), its BOS id set, seeded."""
    import torch
    from transformers import Qwen2ForCausalLM

    from focusft.sources import default

    config = default.default_model_config(tokenizer)
    if config.hidden_size % cfg.heads:
        raise UserError(f"--heads {cfg.heads} must divide the hidden size {config.hidden_size}")
    config.num_attention_heads = config.num_key_value_heads = cfg.heads
    config.bos_token_id = tokenizer.bos_token_id
    config._attn_implementation = "sdpa"
    torch.manual_seed(cfg.seed)
    return Qwen2ForCausalLM(config)


def pretrain(cfg: PretrainConfig, log=print) -> dict:
    """Pretrain the default model; save it to cfg.output_dir atomically; return a summary."""
    import torch

    from focusft.sources import default
    from focusft.experiments.pretrain_data import token_rows, with_bos
    from focusft.experiments.pretrain_sinks import first_token_ratio

    out = Path(cfg.output_dir)
    _validate(cfg, out)
    haystack = resolve_haystack(cfg.haystack)
    torch.manual_seed(cfg.seed)
    tokenizer = with_bos(default.load_default_tokenizer())
    model = build_model(tokenizer, cfg)
    if cfg.seq_len > model.config.max_position_embeddings:
        raise UserError(f"--seq_len {cfg.seq_len} exceeds the model's "
                        f"{model.config.max_position_embeddings} positions")
    opt = _optimizer(model, cfg)
    probe = probe_rows(tokenizer, cfg.seq_len, cfg.sink_rows, haystack)
    rows = token_rows(tokenizer, cfg.seq_len, cfg.seed, cfg.mix, haystack, cfg.bos, cfg.ruler_len)
    sinks = [{"step": 0, **first_token_ratio(model, probe)}]
    model.train()
    start, history, window = time.perf_counter(), [], []
    for step in range(cfg.steps):
        ids = torch.tensor([next(rows) for _ in range(cfg.batch_size)])
        window.append(_step(model, opt, ids, lr_at(step, cfg)))
        done = step + 1
        measure = (cfg.sink_every and done % cfg.sink_every == 0) or done == cfg.steps
        if done % cfg.log_every == 0 or measure:
            history.append({"step": done, "loss": round(sum(window) / len(window), 4)})
            window = []
        if measure:
            sinks.append({"step": done, **first_token_ratio(model, probe)})
            log(f"pretrain step {done}/{cfg.steps} loss {history[-1]['loss']:.4f} "
                f"sink ratio (middle layers) {sinks[-1]['middle_ratio']:.1f} "
                f"per layer {sinks[-1]['ratio']} "
                f"({time.perf_counter() - start:.0f} s)")
    seconds = time.perf_counter() - start
    summary = {"checkpoint": str(out), "recipe": cfg.recipe, "steps": cfg.steps,
               "final_loss": history[-1]["loss"], "seconds": round(seconds, 1),
               "tokens": cfg.steps * cfg.batch_size * cfg.seq_len,
               "parameters": sum(p.numel() for p in model.parameters()),
               "haystack": haystack or "procedural", "sink_ratio_middle": sinks[-1]["middle_ratio"],
               "config": asdict(cfg), "history": history, "sinks": sinks}
    save_atomic(model.eval(), tokenizer, out, summary)
    return summary


def save_atomic(model, tokenizer, out: Path, summary: dict) -> None:
    from focusft.experiments.pretrain_sinks import plot_history

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / "pretrain.json").write_text(json.dumps(summary, indent=2))
        plot_history(summary["sinks"], tmp / "sinks.png",
                     f"recipe {summary['recipe']}: first-token attention, causal, per layer")
        if out.exists():
            shutil.rmtree(out)  # only ever an empty directory here (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
