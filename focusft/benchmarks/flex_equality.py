"""FlexAttention (`--attention_kernel flex`) against the SDPA path, piece by piece, on tiny shapes.

Each check runs the product's own functions twice on the same model, batch and seeds, once with
the plain layout (block-prefix SDPA) and once with its BlockMask (FlexAttention; compiled on
CUDA), and compares every tensor the step produces::

    forward        logits at the loss positions (the last layer through its tail)
    backward       + the gradient of every parameter                        (CUDA only)
    inner loop     FocuSFT step, K = 2, response and context objectives: the inner losses,
                   the outer loss, every parameter gradient                  (CUDA only)
    checkpointing  the inner-loop step under activation checkpointing       (CUDA only)
    kernel         flex_layout_attention == layout_attention with a sliding window, a
                   soft-cap and learned sinks: output (+ q, k, v, sink gradients on CUDA)

The batch has multi-turn GLM rows, right padding and a packed row, S = 300 (not a multiple of
the 128-token tiles). The measure is the relative error ||flex - sdpa|| / ||sdpa||, the
largest over the tensors of a check. Tolerances (`TOLERANCE`): float32 1e-4 (both paths are
exact up to summation order); bfloat16 2e-2 for outputs and 5e-2 for gradients (bf16 keeps 8
bits of mantissa, 2^-8 = 4e-3 per rounding, and the two kernels round at different places).
FlexAttention has no CPU backward (torch 2.13), so on CPU only the forward checks run (eager).
"""

from __future__ import annotations

import torch

TOLERANCE = {"float32": {"output": 1e-4, "grad": 1e-4},
             "bfloat16": {"output": 2e-2, "grad": 5e-2}}
ROWS = [[(90, 0), (30, 1), (100, 0), (40, 1), (40, 0)],  # multi-turn, ends on context
        [(150, 0), (60, 1)]]  # shorter: right padding
PACKED = [(0, 120, 0), (120, 300, 1)]  # row 0 as two packed samples (the second check set)
SEQ = 300


def tiny_model(device: str, dtype: torch.dtype, seed: int = 0):
    """A 4-layer Qwen2 (hidden 256, 4 heads of 64, 2 KV heads) under the focusft attention."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from focusft.core import attention

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=False)
    model = Qwen2ForCausalLM(cfg).to(device=device, dtype=dtype)
    attention.use_focusft_attention(model)
    return model


def make_batch(device: str, packed: bool = False, seed: int = 0) -> dict:
    """The check's batch (module docstring); labels shifted, sample_index when `packed`."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 512, (len(ROWS), SEQ), generator=g)
    loss = torch.zeros(len(ROWS), SEQ, dtype=torch.bool)
    attn = torch.zeros(len(ROWS), SEQ, dtype=torch.long)
    for b, runs in enumerate(ROWS):
        pos = 0
        for n, is_loss in runs:
            loss[b, pos : pos + n] = bool(is_loss)
            pos += n
        attn[b, :pos] = 1
    labels = torch.full_like(ids, -100)
    labels[:, :-1] = torch.where(loss[:, 1:] & attn[:, 1:].bool(), ids[:, 1:], -100)
    batch = {"input_ids": ids, "loss_mask": loss, "attention_mask": attn, "labels": labels,
             "sample_ids": torch.arange(len(ROWS))}
    if packed:
        index = torch.where(attn.bool(), len(PACKED) + torch.arange(len(ROWS))[:, None] - 1, -1)
        pos = torch.arange(SEQ).expand(len(ROWS), SEQ).clone()
        for start, end, sample in PACKED:
            index[0, start:end] = sample
            pos[0, start:end] = torch.arange(end - start)
            labels[0, end - 1] = -100  # no target across samples
        batch.update(sample_index=index, position_ids=pos, sample_ids=torch.arange(int(index.max()) + 1))
    return {k: v.to(device) for k, v in batch.items()}


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    want, got = want.detach().float(), got.detach().float()
    return float((got - want).norm() / want.norm().clamp(min=1e-12))


def _step(model, batch, kernel: str, inner: str | None, backward: bool) -> dict[str, torch.Tensor]:
    """One outer step of the product (optionally with its inner loop): the tensors to compare."""
    from focusft.core.fast_weights import FastWeights
    from focusft.core.inner import InnerConfig
    from focusft.core.step import BilevelStep, arm_inner, batch_layout, outer_logits

    layout = batch_layout(batch, "glm", kernel)
    hooks = []
    if inner is not None:
        fast = FastWeights(model, rank=8, alpha=16.0)
        bilevel = BilevelStep(model, fast, InnerConfig(steps=2, objective=inner))
        hooks = [fast.strip, bilevel.remove]
        arm_inner(fast, bilevel, batch, [11 + i for i in range(len(batch["sample_ids"]))], inner, kernel)
    try:
        with torch.set_grad_enabled(backward):
            logits, kept, _ = outer_logits(model, batch, layout)
        out = {"logits": logits[kept != -100]}
        if inner is not None:
            out["inner losses"] = torch.stack(bilevel.stats.losses)
        if backward:
            loss = torch.nn.functional.cross_entropy(logits.float()[kept != -100], kept[kept != -100])
            model.zero_grad(set_to_none=True)
            loss.backward()
            out.update({f"grad {n}": p.grad.clone() for n, p in model.named_parameters()
                        if p.grad is not None})
    finally:
        for undo in hooks:
            undo()
        model.zero_grad(set_to_none=True)
    return out


def model_check(device: str, dtype: torch.dtype, inner: str | None, backward: bool,
                checkpointing: bool = False, packed: bool = False) -> dict:
    """{"output": err, "grad": err, "tensors": n}: flex against SDPA for one configuration."""
    model = tiny_model(device, dtype)
    if checkpointing:
        model.gradient_checkpointing_enable({"use_reentrant": False})
    model.train(backward)
    batch = make_batch(device, packed)
    want = _step(model, batch, "sdpa", inner, backward)
    got = _step(model, batch, "flex", inner, backward)
    return _compare(got, want)


def _compare(got: dict, want: dict) -> dict:
    if set(got) != set(want):
        raise AssertionError(f"the two paths produced different tensors: {sorted(set(got) ^ set(want))}")
    out = {"output": 0.0, "grad": 0.0, "tensors": len(want)}
    for name, w in want.items():
        kind = "grad" if name.startswith("grad") else "output"
        out[kind] = max(out[kind], relative_error(got[name], w))
    return out


def kernel_check(device: str, dtype: torch.dtype, backward: bool) -> dict:
    """flex_layout_attention == layout_attention under a window of 48, a soft-cap of 20 and sinks."""
    from focusft.core import attention
    from focusft.core.step import batch_layout

    batch = make_batch("cpu", packed=True)
    layout = batch_layout(batch, "glm")
    flex = layout.with_block_mask(device)
    g = torch.Generator().manual_seed(1)
    shape = (len(layout.rows), 4, SEQ, 64)
    q = torch.randn(shape, generator=g).to(device, dtype).requires_grad_(backward)
    k, v = (torch.randn(shape[0], 2, SEQ, 64, generator=g).to(device, dtype).requires_grad_(backward)
            for _ in range(2))
    sinks = torch.tensor([0.5, -1.0, 2.0, 0.0], device=device).requires_grad_(backward)
    weight = torch.randn(shape[0], SEQ, 4, 64, generator=g).to(device, dtype)
    results = {}
    for name, feat in {"window": {"window": 48}, "softcap": {"softcap": 20.0},
                       "sinks+window": {"sinks": sinks, "window": 48}}.items():
        pair = []
        for path in ("sdpa", "flex"):
            with torch.set_grad_enabled(backward):
                if path == "sdpa":
                    out = attention.layout_attention(q, k, v, layout, 0.125, **feat)
                else:
                    out = attention.flex_layout_attention(q, k, v, flex, 0.125, feat.get("softcap"),
                                                          feat.get("window"), feat.get("sinks"))
            tensors = {"out": out}
            if backward:
                inputs = [q, k, v] + ([sinks] if "sinks" in feat else [])
                grads = torch.autograd.grad((out * weight).float().sum(), inputs)
                tensors.update({f"grad {i}": gr for i, gr in enumerate(grads)})
            pair.append(tensors)
        results[name] = _compare(pair[1], pair[0])
    return results


def run_all(device: str, dtypes=("float32", "bfloat16"), deadline: float | None = None) -> list[dict]:
    """Every check for `device` (forward only off CUDA): rows of the equality table. A check
    that would start after `deadline` (time.monotonic) is listed as not run."""
    import time

    backward = device == "cuda"
    plan = [("forward", dict(inner=None, backward=False)),
            ("forward, packed rows", dict(inner=None, backward=False, packed=True))]
    if backward:
        plan += [("backward", dict(inner=None, backward=True)),
                 ("inner loop (response), K=2", dict(inner="response", backward=True)),
                 ("inner loop (context), K=2", dict(inner="context", backward=True)),
                 ("inner loop + activation checkpointing", dict(inner="response", backward=True,
                                                               checkpointing=True)),
                 ("inner loop, packed rows", dict(inner="response", backward=True, packed=True))]
    rows = []
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        if device == "cpu" and dtype_name != "float32":
            continue
        tol = TOLERANCE[dtype_name]
        checks = [(name, lambda kw=kw: model_check(device, dtype, **kw)) for name, kw in plan]
        checks.append(("kernel", lambda: kernel_check(device, dtype, backward)))
        for name, check in checks:
            if deadline is not None and time.monotonic() > deadline:
                rows.append({"check": name, "dtype": dtype_name, "error": "not run (time budget)",
                             "passed": False})
                continue
            try:
                found = check()
            except Exception as err:  # reported, not raised: the other checks still run
                rows.append({"check": name, "dtype": dtype_name, "error": f"{type(err).__name__}: {err}"[:400],
                             "passed": False})
                continue
            for sub, res in (found.items() if name == "kernel" else [(None, found)]):
                label = name if sub is None else f"kernel: {sub}"
                ok = res["output"] <= tol["output"] and res["grad"] <= tol["grad"]
                rows.append({"check": label, "dtype": dtype_name, **res, "passed": ok,
                             "tolerance": tol})
    return rows
