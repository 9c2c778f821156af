"""A short next-token pretraining stage for the embedded default model (`focusft pretrain`).

The paper's SFT starts from a pretrained LM. From-scratch tiny models stay at chance on long
context QA (issue 8), so every method in `focusft experiment` starts from one base made here:

* data: an endless stream of documents, each distractor prose (``--haystack``: procedural prose
  by default, or a directory of books) with the facts of one generated bAbI story (qa1-qa5)
  scattered through it, followed by ``Question: ...`` / ``Answer: ...`` lines. Only stories whose
  content key belongs to the *train* split are used (`focusft.evaluation.splits`), so the base
  never sees a test sample. Documents are concatenated (separated by the eos token) and cut into
  rows of ``seq_len`` tokens.
* model: `default.build_default_model(tokenizer, seed)` (a tiny Qwen2), plain causal attention.
* loop: AdamW, linear warm-up then cosine decay, gradient-norm clip 1.0; next-token loss on
  every token.
* output: a plain Hugging Face checkpoint (safetensors) + the tokenizer + pretrain.json, written
  to a temporary directory and renamed into place.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import UserError

PRETRAIN_TASKS = ("qa1", "qa2", "qa3", "qa4", "qa5")


@dataclass
class PretrainConfig:
    output_dir: str
    steps: int = 300
    seq_len: int = 512
    batch_size: int = 8
    learning_rate: float = 2e-3
    warmup: int = 30
    weight_decay: float = 0.01
    seed: int = 0
    haystack: str | None = None
    noise_sentences: tuple[int, int] = (2, 40)  # distractor sentences per document (min, max)
    log_every: int = 25


def documents(seed: int, haystack=None, noise=(2, 40)):
    """Endless text documents: prose with a train-split bAbI story hidden in it, then its Q/A."""
    from .evaluation.babi import babi_stories
    from .evaluation.chat import babi_key
    from .evaluation.haystack import make_haystack
    from .evaluation.splits import in_split

    rng = random.Random(seed)
    hay = make_haystack(haystack, seed)
    prose = hay.sentences(random.Random(seed + 1))
    streams = {t: babi_stories(t, random.Random(seed * 31 + i)) for i, t in enumerate(PRETRAIN_TASKS)}
    while True:
        sample = next(streams[rng.choice(PRETRAIN_TASKS)])
        if not in_split(babi_key(sample), "train"):
            continue
        filler = [next(prose) for _ in range(rng.randint(*noise))]
        slots = sorted(rng.randint(0, len(filler)) for _ in sample.facts)
        text = list(filler)
        for offset, (slot, fact) in enumerate(zip(slots, sample.facts)):
            text.insert(slot + offset, fact)
        yield " ".join(text) + f"\nQuestion: {sample.question}\nAnswer: {sample.answer}"


def token_rows(tokenizer, seq_len: int, seed: int, haystack=None, noise=(2, 40)):
    """Endless rows of exactly `seq_len` token ids (documents concatenated with eos between)."""
    eos = tokenizer.eos_token_id
    buffer: list[int] = []
    for doc in documents(seed, haystack, noise):
        buffer += tokenizer(doc, add_special_tokens=False)["input_ids"] + [eos]
        while len(buffer) >= seq_len:
            yield buffer[:seq_len]
            buffer = buffer[seq_len:]


def lr_at(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.learning_rate * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.learning_rate * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def pretrain(cfg: PretrainConfig, log=print) -> dict:
    """Pretrain the default model; save it to cfg.output_dir atomically; return a summary."""
    import torch

    from . import default

    out = Path(cfg.output_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--output_dir {out} exists and is not empty; choose a new directory")
    if cfg.steps < 1 or cfg.seq_len < 16:
        raise UserError("--steps must be >= 1 and --seq_len >= 16")
    torch.manual_seed(cfg.seed)
    tokenizer = default.load_default_tokenizer()
    model = default.build_default_model(tokenizer, seed=cfg.seed)
    if cfg.seq_len > model.config.max_position_embeddings:
        raise UserError(f"--seq_len {cfg.seq_len} exceeds the model's "
                        f"{model.config.max_position_embeddings} positions")
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.learning_rate)
    rows = token_rows(tokenizer, cfg.seq_len, cfg.seed, cfg.haystack, cfg.noise_sentences)
    model.train()
    start, history, window = time.perf_counter(), [], []
    for step in range(cfg.steps):
        ids = torch.tensor([next(rows) for _ in range(cfg.batch_size)])
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        window.append(loss.item())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            mean = sum(window) / len(window)
            history.append({"step": step + 1, "loss": round(mean, 4)})
            log(f"pretrain step {step + 1}/{cfg.steps} loss {mean:.4f}")
            window = []
    seconds = time.perf_counter() - start
    summary = {"checkpoint": str(out), "steps": cfg.steps, "final_loss": history[-1]["loss"],
               "seconds": round(seconds, 1), "tokens": cfg.steps * cfg.batch_size * cfg.seq_len,
               "parameters": sum(p.numel() for p in model.parameters()),
               "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
               "history": history}
    save_atomic(model.eval(), tokenizer, out, summary)
    return summary


def save_atomic(model, tokenizer, out: Path, summary: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / "pretrain.json").write_text(json.dumps(summary, indent=2))
        if out.exists():
            shutil.rmtree(out)  # only ever an empty directory here (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
