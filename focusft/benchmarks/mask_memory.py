"""Host memory and time of building a layout's FlexAttention BlockMask, from its key ranges
(`focusft.core.block_mask`) or, for comparison, through torch's ``create_block_mask`` on the
dense mask function (how focusft built it before).

    python -m focusft.benchmarks.mask_memory 8k 32k 128k            # from key ranges
    python -m focusft.benchmarks.mask_memory 4k 8k 16k --dense      # create_block_mask

One row of S tokens in turns of 4096 tokens (3584 context, then a 512-token
answer), GLM layout, CPU. Each length runs in a fresh process: the figure is the growth of the
peak resident set (``ru_maxrss`` after minus before) while the BlockMask is built, the layout
and its (lo, hi) ranges already in place; the time is the build's wall time.
"""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import resource, sys, time, torch
from focusft.core.masks import AttentionLayout
seq, kind = int(sys.argv[1]), sys.argv[2]
loss = torch.zeros(1, seq, dtype=torch.long)
for start in range(0, seq, 4096):
    loss[0, start + 3584 : start + 4096] = 1
lo, hi = AttentionLayout.glm(loss, [seq]).key_ranges()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
began = time.perf_counter()
if kind == "ranges":
    from focusft.core.block_mask import from_key_ranges
    mask = from_key_ranges(lo, hi, "cpu")
else:
    from torch.nn.attention.flex_attention import create_block_mask
    mask = create_block_mask(lambda b, h, q, k: (k >= lo[b, q]) & (k < hi[b, q]), 1, None, seq, seq,
                             device="cpu")
took = time.perf_counter() - began
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024, took)
"""


def build_cost(seq: int, kind: str = "ranges") -> tuple[int, float]:
    """(peak resident-set growth in bytes, seconds) of one build in a fresh process."""
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(seq), kind], capture_output=True, text=True,
                         check=True)
    grown, took = out.stdout.split()[-2:]
    return int(grown), float(took)


def main(argv=None) -> int:
    from focusft.benchmarks.bench import parse_length

    argv = list(sys.argv[1:] if argv is None else argv)
    kind = "dense" if "--dense" in argv else "ranges"
    print("| tokens | BlockMask built by | peak RSS growth | seconds |\n|---|---|---|---|")
    for item in (a for a in argv if a != "--dense"):
        seq = parse_length(item)
        grown, took = build_cost(seq, kind)
        how = "key ranges" if kind == "ranges" else "create_block_mask (dense mask_mod)"
        print(f"| {seq} | {how} | {grown / 2**20:.1f} MiB | {took:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
