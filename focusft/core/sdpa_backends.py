"""On CUDA, layout attention runs on a fused SDPA kernel or stops: no silent math fallback.

SDPA picks a kernel per call: flash, memory-efficient, cuDNN, or the math fallback, which forms
the (queries x keys) scores of the call and runs many times slower. Under a layout
(`focusft.core.attention`) one call is one block, often most of the sequence, so a fallback
there costs O(S^2) memory and time without a word. What the fused kernels take (torch 2.13,
GPUs of compute capability 8.0 and newer; ``aten/src/ATen/native/transformers/cuda/sdp_utils.cpp``)::

    flash       float16 / bfloat16, head size <= 256, no explicit mask
    efficient   float16 / bfloat16 (head size a multiple of 8) or float32 (a multiple of 4),
                explicit masks allowed
    cuDNN       float16 / bfloat16, head size <= 256, a multiple of 8

An explicit mask comes from a sliding window shorter than a causal block (its tiles, see
`focusft.core.tiled_attention`); the other blocks need none (plain or lower-right causal).

`fused_backends` is that table as a pure function of the device type, dtype, head size and
whether a mask is needed: None off CUDA (any kernel: CPU behaviour unchanged), else the fused
kernels that qualify, or `UserError` naming the cause when none does. `on_fused_kernels` wraps
layout attention with it: on CUDA the call runs under ``sdpa_kernel(<those>)``, and if torch
still finds no kernel (an older GPU, a misaligned tensor) its "No available kernel" error
becomes a `UserError` with torch's own reasons.
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from focusft.core.masks import window_binds
from focusft.errors import UserError

HALF = (torch.float16, torch.bfloat16)
FLASH_MAX_HEAD = 256


def _reasons(dtype: torch.dtype, head_dim: int, masked: bool) -> dict[SDPBackend, str | None]:
    """Each fused kernel -> None if it takes the call, else why not."""
    half = dtype in HALF
    name = str(dtype).removeprefix("torch.")
    align = 8 if half else 4
    flash = (f"needs float16/bfloat16, not {name}" if not half
             else f"takes head sizes up to {FLASH_MAX_HEAD}, not {head_dim}" if head_dim > FLASH_MAX_HEAD
             else "takes no explicit mask (a sliding window shorter than a block needs one)" if masked
             else None)
    efficient = (f"needs float16/bfloat16/float32, not {name}" if not half and dtype != torch.float32
                 else f"needs a head size divisible by {align} in {name}, not {head_dim}"
                 if head_dim % align else None)
    cudnn = (f"needs float16/bfloat16, not {name}" if not half
             else f"takes head sizes up to {FLASH_MAX_HEAD} divisible by 8, not {head_dim}"
             if head_dim > FLASH_MAX_HEAD or head_dim % 8 else None)
    return {SDPBackend.FLASH_ATTENTION: flash, SDPBackend.EFFICIENT_ATTENTION: efficient,
            SDPBackend.CUDNN_ATTENTION: cudnn}


def fused_backends(device_type: str, dtype: torch.dtype, head_dim: int,
                   masked: bool = False) -> tuple[SDPBackend, ...] | None:
    """The SDPA kernels layout attention may use (module docstring): None = any (not CUDA).

    >>> fused_backends("cpu", torch.float32, 64) is None
    True
    >>> [b.name for b in fused_backends("cuda", torch.float32, 64)]
    ['EFFICIENT_ATTENTION']
    >>> [b.name for b in fused_backends("cuda", torch.bfloat16, 64, masked=True)]
    ['EFFICIENT_ATTENTION', 'CUDNN_ATTENTION']
    """
    if device_type != "cuda":
        return None
    reasons = _reasons(dtype, head_dim, masked)
    fine = tuple(b for b, why in reasons.items() if why is None)
    if not fine:
        what = "; ".join(f"{b.name.split('_')[0].lower()} {why}" for b, why in reasons.items())
        window = " under a sliding window shorter than a block" if masked else ""
        raise UserError(
            f"The focusft attention on CUDA found no fused SDPA kernel for {str(dtype).removeprefix('torch.')} "
            f"with head size {head_dim}{window} ({what}). SDPA's math fallback would form every "
            "block's full score matrix (O(S^2) memory, many times slower), so focusft stops instead: "
            "train in bfloat16 (--bf16 true), or use a model whose head size a fused kernel takes.")
    return fine


def _needs_mask(layout, window: int | None) -> bool:
    """A causal block that the window cuts: its tiles go through SDPA with an explicit mask."""
    return window is not None and any(blk.causal and window_binds(blk, window)
                                      for row in layout.rows for blk in row)


def on_fused_kernels(attend):
    """Wrap ``attend(query, key, value, layout, ..., window=None, ...)`` (module docstring)."""

    @functools.wraps(attend)
    def run(query, key, value, layout, *args, **kwargs):
        if query.device.type != "cuda":
            return attend(query, key, value, layout, *args, **kwargs)
        masked = _needs_mask(layout, kwargs.get("window"))
        fused_backends("cuda", query.dtype, query.shape[-1], masked)  # a cause known up front
        allowed = fused_backends("cuda", query.dtype, query.shape[-1])
        try:
            with sdpa_kernel(list(allowed)):
                return attend(query, key, value, layout, *args, **kwargs)
        except RuntimeError as err:
            if "No available kernel" not in str(err):
                raise
            with warnings.catch_warnings(record=True) as caught, sdpa_kernel(list(allowed)), \
                    torch.no_grad():  # once more, to collect torch's reasons (its warnings)
                warnings.simplefilter("always")
                try:
                    attend(query, key, value, layout, *args, **kwargs)
                except RuntimeError:
                    pass
            why = " ".join(str(w.message).strip() for w in caught) or str(err)
            raise UserError(f"The focusft attention on CUDA found no fused SDPA kernel for this call "
                            f"({str(query.dtype).removeprefix('torch.')}, head size {query.shape[-1]}); "
                            f"torch says: {why} SDPA's math fallback would form every block's full "
                            "score matrix, so focusft stops instead.") from err

    return run
