"""Layout attention on CUDA: fused SDPA kernels only, or a UserError naming the cause.

No GPU here: the kernel table is a pure function (checked directly), and the wrapper is driven
with a stand-in query whose device says "cuda" (the flags it sets are torch's global ones).
"""

import types

import pytest
import torch
from torch.nn.attention import SDPBackend

from focusft.core.masks import AttentionLayout
from focusft.core.sdpa_backends import fused_backends, on_fused_kernels
from focusft.errors import UserError

FLASH, EFFICIENT, CUDNN = (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                           SDPBackend.CUDNN_ATTENTION)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_off_cuda_any_kernel(dtype):
    assert fused_backends("cpu", dtype, 999, masked=True) is None


@pytest.mark.parametrize("dtype, head_dim, masked, want", [
    (torch.bfloat16, 64, False, {FLASH, EFFICIENT, CUDNN}),
    (torch.float16, 128, False, {FLASH, EFFICIENT, CUDNN}),
    (torch.bfloat16, 64, True, {EFFICIENT, CUDNN}),  # a window's explicit mask: no flash
    (torch.bfloat16, 320, False, {EFFICIENT}),  # above flash's 256
    (torch.bfloat16, 12, False, {FLASH}),  # not a multiple of 8
    (torch.float32, 64, False, {EFFICIENT}),  # float32: the memory-efficient kernel only
    (torch.float32, 320, True, {EFFICIENT}),
])
def test_fused_kernels_that_qualify(dtype, head_dim, masked, want):
    assert set(fused_backends("cuda", dtype, head_dim, masked)) == want


@pytest.mark.parametrize("dtype, head_dim, masked, words", [
    (torch.float64, 64, False, ["float64", "needs float16/bfloat16/float32"]),
    (torch.float32, 6, False, ["head size 6", "divisible by 4"]),
    (torch.bfloat16, 12, True, ["head size 12", "sliding window", "divisible by 8"]),
    (torch.bfloat16, 260, False, ["head size 260", "up to 256"]),
])
def test_no_fused_kernel_names_the_cause(dtype, head_dim, masked, words):
    with pytest.raises(UserError) as err:
        fused_backends("cuda", dtype, head_dim, masked)
    for word in words:
        assert word in str(err.value)
    assert "math fallback" in str(err.value)


def cuda_like(dtype=torch.bfloat16, head_dim=64):
    return types.SimpleNamespace(device=torch.device("cuda"), dtype=dtype, shape=(1, 2, 16, head_dim))


def enabled() -> set:
    flags = {FLASH: torch.backends.cuda.flash_sdp_enabled(),
             EFFICIENT: torch.backends.cuda.mem_efficient_sdp_enabled(),
             CUDNN: torch.backends.cuda.cudnn_sdp_enabled(),
             SDPBackend.MATH: torch.backends.cuda.math_sdp_enabled()}
    return {b for b, on in flags.items() if on}


def test_on_cuda_the_call_runs_with_the_fused_kernels_only():
    seen = []

    @on_fused_kernels
    def attend(query, key, value, layout, scale=None, *, window=None):
        seen.append(enabled())
        return "out"

    layout = AttentionLayout.causal([16], 16)
    before = enabled()
    assert attend(cuda_like(), None, None, layout, window=None) == "out"
    assert seen == [{FLASH, EFFICIENT, CUDNN}]
    assert enabled() == before  # restored
    assert attend(cuda_like(torch.float32), None, None, layout, window=4) == "out"
    assert seen[-1] == {EFFICIENT}
    with pytest.raises(UserError, match="sliding window"):  # the window cuts the causal block
        attend(cuda_like(torch.bfloat16, 12), None, None, layout, window=4)
    attend(cuda_like(torch.bfloat16, 12), None, None, layout, window=16)  # a window that cuts nothing
    assert seen[-1] == {FLASH}


def test_on_cpu_nothing_is_restricted():
    @on_fused_kernels
    def attend(query, key, value, layout, **kwargs):
        return enabled()

    q = torch.zeros(1, 2, 4, 8, dtype=torch.float64)
    assert SDPBackend.MATH in attend(q, q, q, AttentionLayout.causal([4], 4))


def test_no_available_kernel_becomes_a_user_error():
    @on_fused_kernels
    def attend(query, key, value, layout, **kwargs):
        raise RuntimeError("No available kernel. Aborting execution.")

    with pytest.raises(UserError, match="no fused SDPA kernel"):
        attend(cuda_like(), None, None, AttentionLayout.causal([16], 16))

    @on_fused_kernels
    def other(query, key, value, layout, **kwargs):
        raise RuntimeError("something else")

    with pytest.raises(RuntimeError, match="something else"):
        other(cuda_like(), None, None, AttentionLayout.causal([16], 16))
