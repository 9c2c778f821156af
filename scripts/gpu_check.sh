#!/usr/bin/env bash
# The checks that need a GPU (FlexAttention compiled: forward, backward, inner loop,
# checkpointing; a bf16 `focusft train` at 8K; `focusft bench` at 4K-32K with both kernels;
# the host-device synchronisations of a step), about 8 minutes on one H100.
# Writes docs/benchmark-gpu.md and docs/benchmark-gpu.json (or OUT given as the first argument).
# See focusft/experiments/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-docs}"
shift || true
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device')"
exec python -m focusft.experiments.gpu_check --out "$out" "$@"
