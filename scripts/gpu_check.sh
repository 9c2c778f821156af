#!/usr/bin/env bash
# The checks that need a GPU (FlexAttention compiled: forward, backward, inner loop,
# checkpointing; a bf16 `focusft train` at 8K; `focusft bench` at 4K-32K with both kernels;
# the host-device synchronisations of a step), about 8 minutes on one H100.
#
#   scripts/gpu_check.sh [OUT] [more flags of python -m focusft.benchmarks.gpu_check]
#
# Writes OUT/benchmark-gpu.md and OUT/benchmark-gpu.json (OUT defaults to docs). PYTHON picks
# the interpreter (default: python). See focusft/benchmarks/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python}"
out="${1:-docs}"
shift || true
"$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device')"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" -m focusft.benchmarks.gpu_check --out "$out" "$@"
