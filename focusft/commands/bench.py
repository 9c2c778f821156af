"""`focusft bench`: step time and peak memory of SFT-causal, SFT-GLM and FocuSFT.

    focusft bench --lengths 1k,2k,4k,8k,16k --repeats 3 --warmup 1 --out docs
    focusft bench --tiny --out runs/bench           # seconds: the CI smoke test
    focusft bench --shape smollm2 --lengths 1k,2k,4k,8k --out docs   # the real base's shape

Writes ``OUT/benchmark.json`` (every measurement, the resolved settings, the machine, the load)
and ``OUT/benchmark.md`` (the tables: `focusft.benchmarks.bench_report`). What is measured and
how: `focusft.benchmarks.bench`.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict

from focusft.errors import UserError
from focusft.commands.lists import list_flag, split_items


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="step time / peak memory of SFT-causal, SFT-GLM, FocuSFT",
                              description=__doc__.splitlines()[0])
    list_flag(p, "--lengths", default=None,
              help="sequence lengths in tokens, 1k = 1024 (default 1k 2k 4k 8k 16k; --tiny: 256 512)")
    list_flag(p, "--methods", default=["sft-causal", "sft-glm", "focusft"],
              help="subset of sft-causal, sft-glm, focusft")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per cell (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before the timed ones")
    p.add_argument("--out", required=True, help="directory for benchmark.json and benchmark.md")
    p.add_argument("--tiny", action="store_true",
                   help="smoke-test preset: 2 layers, hidden 64, lengths 256,512")
    m = p.add_argument_group("model (built from its config, random weights; default: the reference's tiny Qwen2)")
    m.add_argument("--shape", default=None, choices=("reference", "tiny", "smollm2"),
                   help="a named model shape: reference (8 layers, hidden 256), tiny, or smollm2 "
                        "(SmolLM2-135M: Llama, 30 layers, hidden 576, 9 / 3 heads, vocab 49152, "
                        "tied embeddings); the flags below override it")
    m.add_argument("--family", default=None, choices=("qwen2", "llama"), help="architecture")
    m.add_argument("--tied", default=None, choices=("true", "false"),
                   help="tie the input embedding and the LM head")
    m.add_argument("--layers", type=int, default=None, help="decoder layers (default 8)")
    m.add_argument("--hidden", type=int, default=None, help="hidden size (default 256)")
    m.add_argument("--heads", type=int, default=None, help="attention heads (default 8)")
    m.add_argument("--kv-heads", "--kv_heads", type=int, default=None, help="KV heads (default 2)")
    m.add_argument("--intermediate", type=int, default=None, help="MLP size (default 704)")
    m.add_argument("--vocab", type=int, default=None, help="vocabulary size (default 2048)")
    m.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                   help="weights and activations (default float32)")
    s = p.add_argument_group("step")
    s.add_argument("--response-tokens", type=int, default=None,
                   help="assistant tokens at the end of the sequence (the response block; default 64)")
    s.add_argument("--turns", type=int, default=0,
                   help="N turns of S/N tokens instead, the last 1/8 of each its response")
    s.add_argument("--inner-steps", type=int, default=2, help="FocuSFT inner SGD steps K")
    s.add_argument("--fast-rank", type=int, default=32, help="fast LoRA rank")
    s.add_argument("--fast-alpha", type=float, default=64.0, help="fast LoRA alpha")
    s.add_argument("--fast-layer-fraction", type=float, default=0.35,
                   help="top fraction of layers carrying fast weights")
    s.add_argument("--seed", type=int, default=0, help="weights, batch and fast-weight seed")
    r = p.add_argument_group("running")
    r.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto = cuda when available")
    r.add_argument("--attention-kernel", default="sdpa", choices=("sdpa", "flex"),
                   help="sdpa: block-prefix SDPA; flex: FlexAttention BlockMask (CUDA only)")
    r.add_argument("--no-live-memory", action="store_true",
                   help="skip the extra profiled step that reads the live-tensor peak (CPU)")
    r.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads per cell (0 = torch's default)")
    r.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                   help="wall: elapsed time; cpu: this process's CPU time, so that other jobs "
                        "on the machine do not count (CPU only; exact with --threads 1)")
    r.add_argument("--no-interleave", action="store_true",
                   help="time each (method, length) cell on its own instead of interleaving the "
                        "methods repeat by repeat in one process per length")
    r.add_argument("--inline", action="store_true",
                   help="measure in this process instead of one fresh subprocess per cell "
                        "(faster to start; peak-memory readings then share one allocator)")
    r.add_argument("--config-timeout", type=float, default=1800.0,
                   help="seconds allowed per (method, length) cell; longer lengths of a method "
                        "predicted to exceed it (time ~ S^2) are skipped")
    p.set_defaults(func=run)


def spec_from_args(args):
    from focusft.benchmarks.bench import SHAPES, TINY_MODEL, BenchSpec, ModelSpec, parse_length

    base = SHAPES[args.shape] if args.shape else TINY_MODEL if args.tiny else ModelSpec()
    given = {"layers": args.layers, "hidden": args.hidden, "heads": args.heads,
             "kv_heads": args.kv_heads, "intermediate": args.intermediate, "vocab": args.vocab,
             "dtype": args.dtype, "family": args.family,
             "tied": None if args.tied is None else args.tied == "true"}
    model = ModelSpec(**{**asdict(base), **{k: v for k, v in given.items() if v is not None}})
    lengths = args.lengths or ("256,512" if args.tiny else "1k,2k,4k,8k,16k")
    if args.turns and args.response_tokens is not None:
        raise UserError("--turns sets the response tokens (1/8 of every turn): leave out --response-tokens")
    try:
        return BenchSpec(
            model=model, methods=tuple(split_items(args.methods)),
            lengths=tuple(parse_length(x) for x in split_items(lengths)),
            repeats=args.repeats, warmup=args.warmup, response_tokens=args.response_tokens or 64, turns=args.turns,
            device=args.device, threads=args.threads, clock=args.clock, attention_kernel=args.attention_kernel,
            live_memory=not args.no_live_memory, inner_steps=args.inner_steps,
            fast_rank=args.fast_rank, fast_alpha=args.fast_alpha,
            fast_layer_fraction=args.fast_layer_fraction, seed=args.seed,
            isolate=not args.inline, interleave=not args.no_interleave,
            config_timeout=args.config_timeout)
    except ValueError as err:
        raise UserError(str(err)) from None


def canonical_command(spec, out: str) -> str:
    """The command line that reproduces `spec` with every setting spelled out."""
    m = spec.model
    flags = [
        "--lengths", ",".join(str(n) for n in spec.lengths), "--methods", ",".join(spec.methods),
        "--repeats", spec.repeats, "--warmup", spec.warmup, "--out", out,
        "--layers", m.layers, "--hidden", m.hidden, "--heads", m.heads, "--kv-heads", m.kv_heads,
        "--intermediate", m.intermediate, "--vocab", m.vocab, "--dtype", m.dtype,
        "--family", m.family, "--tied", str(m.tied).lower(),
        *(("--turns", spec.turns) if spec.turns else ("--response-tokens", spec.response_tokens)),
        "--inner-steps", spec.inner_steps,
        "--fast-rank", spec.fast_rank, "--fast-alpha", f"{spec.fast_alpha:g}",
        "--fast-layer-fraction", f"{spec.fast_layer_fraction:g}", "--seed", spec.seed,
        "--device", spec.device, "--attention-kernel", spec.attention_kernel,
        "--threads", spec.threads, "--clock", spec.clock,
        "--config-timeout", f"{spec.config_timeout:g}",
    ]
    extra = ("" if spec.isolate else " --inline") + ("" if spec.live_memory else " --no-live-memory") \
        + ("" if spec.interleave else " --no-interleave")
    return "focusft bench " + shlex.join(str(x) for x in flags) + extra


def run(args) -> int:
    from focusft.benchmarks.bench_report import run_and_write

    spec = spec_from_args(args)
    return run_and_write(spec, canonical_command(spec, args.out), args.out)
