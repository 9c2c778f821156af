"""`focusft bench`: step time and peak memory of SFT-causal, SFT-GLM and FocuSFT.

    focusft bench --lengths 1k,2k,4k,8k,16k --repeats 3 --warmup 1 --out docs
    focusft bench --tiny --out runs/bench           # seconds: the CI smoke test
    focusft bench --shape smollm2 --lengths 1k,2k,4k,8k --out docs   # the real base's shape

Writes ``OUT/benchmark.json`` (every measurement, the resolved settings, the machine, the load)
and ``OUT/benchmark.md`` (the tables). What is measured and how: `focusft.experiments.bench`.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict
from pathlib import Path

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
    from focusft.experiments.bench import SHAPES, TINY_MODEL, BenchSpec, ModelSpec, parse_length

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
            device=args.device, threads=args.threads, attention_kernel=args.attention_kernel,
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
        "--threads", spec.threads,
        "--config-timeout", f"{spec.config_timeout:g}",
    ]
    extra = ("" if spec.isolate else " --inline") + ("" if spec.live_memory else " --no-live-memory") \
        + ("" if spec.interleave else " --no-interleave")
    return "focusft bench " + shlex.join(str(x) for x in flags) + extra


def run(args) -> int:
    from focusft.experiments.bench import resolve_device
    from focusft.experiments.bench_sweep import run_benchmark

    spec = spec_from_args(args)
    if spec.device == "cuda" and resolve_device("auto") != "cuda":
        raise UserError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if spec.attention_kernel == "flex" and resolve_device(spec.device) != "cuda":
        raise UserError("--attention-kernel flex needs CUDA (FlexAttention has no CPU backward)")
    command = canonical_command(spec, args.out)
    report = run_benchmark(spec, command, log=lambda line: print(line, flush=True))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "benchmark.md").write_text(render_markdown(report))
    print(f"wrote {out / 'benchmark.md'} and {out / 'benchmark.json'}")
    return 0


# --------------------------------------------------------------------------- markdown
NAMES = {"sft-causal": "SFT-causal", "sft-glm": "SFT-GLM", "focusft": "FocuSFT"}


def _f(value, fmt: str = ".2f", missing: str = "–") -> str:
    return missing if value is None else format(value, fmt)


def _k(seq_len: int) -> str:
    return f"{seq_len // 1024}K" if seq_len % 1024 == 0 else str(seq_len)


def _mib(row, key: str = "peak_mem_bytes") -> str:
    return "–" if row is None or key not in row else f"{row[key] / 2**20:.0f}"


def render_markdown(report: dict) -> str:
    from focusft.experiments.bench import METHODS, REFERENCE_CPU, REFERENCE_SECONDS, describe_batch
    from focusft.experiments.bench_sweep import (_cell, growth_exponents, is_reference_model,
                                                 step_seconds)

    spec, mach, res = report["spec"], report["machine"], report["results"]
    model = spec["model"]
    floor = report["cost_floor"]
    lines = [
        "# Step cost: SFT-causal, SFT-GLM, FocuSFT", "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['created']}; whole run {report['wall_s']:.0f} s  ",
        f"Machine: {mach['cpu']}, {mach['cpus']} CPUs, {mach.get('memory_gib', '?')} GiB; "
        f"device {mach['device']}{' (' + mach['gpu'] + ')' if 'gpu' in mach else ''}; "
        f"torch {mach['torch']} ({mach['torch_threads']} threads), transformers "
        f"{mach['transformers']}, Python {mach['python']}  ",
        "Load average (1, 5, 15 min): start " + _load(report["load_avg_start"]) + ", end "
        + _load(report["load_avg_end"]) + " (per cell below)  ",
        f"Model: {_family(model)} from config, {model['layers']} layers, hidden {model['hidden']}, "
        f"{model['heads']} heads / {model['kv_heads']} KV heads, intermediate "
        f"{model['intermediate']}, vocab {model['vocab']}"
        f"{', tied embeddings' if model.get('tied') else ''}, {model['dtype']}, random weights  ",
        f"Batch: {describe_batch(spec)}  ",
        f"Step: layout + forward + backward + AdamW step; FocuSFT adds K = {spec['inner_steps']} "
        f"inner SGD steps (fast LoRA rank {spec['fast_rank']}, alpha {spec['fast_alpha']:g}, "
        f"top {spec['fast_layer_fraction']:.0%} of layers = {report['adapted_layers']} layers, "
        f"{'/'.join(spec['fast_target_modules'])}) inside the outer forward  ",
        (f"Time: the methods interleaved repeat by repeat (A B C A B C ...) in one process per "
         f"length, {spec['warmup']} warm-up step(s) each, then {spec['repeats']} rounds; a step "
         "time is the median over rounds, a ratio is taken within each round (pair by pair) and "
         "given as the median [min-max] over rounds, so a drifting machine moves both sides alike. "
         "Peak memory: one cell (one timed step) per method and length"
         + (", each in a fresh subprocess  " if spec['isolate'] else "  ")
         if spec.get("interleave") else
         f"Time: median of {spec['repeats']} steps after {spec['warmup']} warm-up step(s); "
         f"{'one fresh subprocess per cell' if spec['isolate'] else 'all cells in one process'}  "),
        "Peak memory: " + _mem_method(res) + ("; live tensors: peak of the running sum of "
        "allocation events of one extra step under torch.profiler(profile_memory=True)"
        if spec.get("live_memory") and mach["device"] == "cpu" else ""), "",
        "## Step time and peak memory", "",
        "| S | SFT-causal s | SFT-GLM s | FocuSFT s | of which inner s | FocuSFT / SFT-GLM "
        f"| floor (3+2Kf)/3, f={spec['fast_layer_fraction']:g} | floor, f={report['adapted_layers']}"
        f"/{model['layers']} | SFT-GLM / SFT-causal | peak RSS MiB causal | GLM | FocuSFT "
        "| RSS FocuSFT / causal | live MiB causal | GLM | FocuSFT | live FocuSFT / causal |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["ratios"]:
        s = r["seq_len"]
        c, g, f = (_cell(res, m, s) for m in METHODS)
        lines.append(
            f"| {_k(s)} | {_sec(report, 'sft-causal', s)} | {_sec(report, 'sft-glm', s)} | "
            f"{_sec(report, 'focusft', s)} | {_secs(f['phases_s']['inner_s'] if f else None)} | "
            f"{_pair(r, 'focusft_over_glm')} | {floor['issue']:.3f} | {floor['actual_layers']:.3f} | "
            f"{_pair(r, 'glm_over_causal')} | {_mib(c)} | {_mib(g)} | {_mib(f)} | "
            f"{_f(r['mem_focusft_over_causal'])} | {_mib(c, 'live_peak_bytes')} | "
            f"{_mib(g, 'live_peak_bytes')} | {_mib(f, 'live_peak_bytes')} | "
            f"{_f(r['live_mem_focusft_over_causal'])} |")
    reference = is_reference_model(spec) and mach["device"] == "cpu"
    if reference:
        same = mach["cpu"].split(",")[0] in REFERENCE_CPU
        lines += ["", "## Against the public reference code (same model)", "",
                  f"Reference seconds measured on {REFERENCE_CPU}; this run: {mach['cpu']}"
                  + ("." if same else " (another CPU: these ratios compare two machines)."), "",
                  "| S | method | reference s | focusft s | focusft / reference |",
                  "|---:|---|---:|---:|---:|"]
        for s, ref in REFERENCE_SECONDS.items():
            for m in METHODS:
                ours = step_seconds(report, m, s)
                lines.append(f"| {_k(s)} | {NAMES[m]} | {ref[m]:.2f} | {_secs(ours)} | "
                             f"{_f(_ratio(ours, ref[m]))} |")
    lines += ["", "## Targets", "", "| target | threshold | measured | holds |",
              "|---|---|---:|---|"]
    for t in report["targets"]:
        holds = {True: "yes", False: "**no**", None: "not measured"}[t["holds"]]
        lines.append(f"| {t['target']} | {t['threshold']} | {_f(t['value'], '.3f')} | {holds} |")
    if not reference:
        lines.append("\nThe reference times apply to the default model in float32 on CPU only.")
    lines += ["", "## Growth with S (exponent per doubling; 1 = linear, 2 = quadratic)", "",
              "| method | peak memory | step time |", "|---|---|---|"]
    for m in METHODS:
        mem = ", ".join(f"{_k(s)}: {e:.2f}" for s, e in growth_exponents(res, m, "peak_mem_bytes"))
        timed = [{"method": m, "seq_len": s, "status": "ok", "median_s": step_seconds(report, m, s)}
                 for s in spec["lengths"] if step_seconds(report, m, s)]
        tim = ", ".join(f"{_k(s)}: {e:.2f}" for s, e in growth_exponents(timed, m, "median_s"))
        lines.append(f"| {NAMES[m]} | {mem or '–'} | {tim or '–'} |")
    lines += ["", "## Every cell", "",
              "| method | S | status | steps s | min s | forward s | inner s | backward s "
              "| optimizer s | peak RSS MiB | live peak MiB | left allocated MiB | load start → end |",
              "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in res:
        lines.append(_detail(row))
    rounds = [row for row in report.get("interleaved", [])]
    if rounds:
        lines += ["", "## Every interleaved round (seconds per step, in the order run)", "",
                  "| S | round | " + " | ".join(NAMES[m] for m in METHODS) + " | load start → end |",
                  "|---:|---:|" + "---:|" * len(METHODS) + "---|"]
        for row in rounds:
            if row["status"] != "ok":
                lines.append(f"| {_k(row['seq_len'])} | {row['status']} ({row['reason']}) |"
                             + " |" * (len(METHODS) + 1))
                continue
            for i, r in enumerate(row["rounds"], 1):
                cells = " | ".join(_secs(r.get(m)) for m in METHODS)
                lines.append(f"| {_k(row['seq_len'])} | {i} | {cells} | "
                             f"{_load(row['load_avg_start'])} → {_load(row['load_avg_end'])} |")
    lines += ["", "## Notes", "",
              "- Step time grows ~S^2 by nature (attention); memory must not: no S x S tensor "
              "is formed on any path (block-prefix SDPA; logits at loss positions only).",
              f"- Attention kernel: {spec.get('attention_kernel', 'sdpa')}. The FlexAttention "
              "BlockMask path (`--attention-kernel flex`) needs CUDA (no CPU backward); "
              + ("it is measured here." if spec.get("attention_kernel") == "flex" else
                 "it is not measured in this run."),
              "- The CPU is shared with other jobs: see the load averages. Step times under load "
              "are noisy; `min s` is the least disturbed reading.", ""]
    return "\n".join(lines)


def _secs(value) -> str:
    return "–" if value is None else f"{value:.3f}" if value < 10 else f"{value:.2f}"


def _left(row) -> str:
    return "–" if "retained_bytes" not in row else f"{row['retained_bytes'] / 2**20:.1f}"


def _load(load) -> str:
    return ", ".join(f"{x:.2f}" for x in load)


def _ratio(a, b):
    return a / b if a is not None and b else None


def _family(model: dict) -> str:
    return {"qwen2": "Qwen2", "llama": "Llama"}[model.get("family", "qwen2")]


def _pair(row: dict, key: str) -> str:
    """A ratio: the median over interleaved rounds [min-max], or the cells' ratio."""
    pairs = row.get(f"{key}_pairs")
    if pairs:
        return f"{pairs['median']:.2f} [{pairs['min']:.2f}-{pairs['max']:.2f}]"
    return _f(row[key])


def _sec(report, method, seq_len) -> str:
    from focusft.experiments.bench_sweep import step_seconds

    value = step_seconds(report, method, seq_len)
    if value is not None:
        return _secs(value)
    for r in report["results"]:
        if r["method"] == method and r["seq_len"] == seq_len:
            return r["status"]
    return "–"


def _mem_method(results) -> str:
    methods = {r["mem_method"] for r in results if r["status"] == "ok"}
    return "; ".join(sorted(methods)) or "–"


def _detail(row: dict) -> str:
    head = f"| {NAMES[row['method']]} | {_k(row['seq_len'])} | {row['status']}"
    if row["status"] != "ok":
        return head + f" ({row['reason']}) | | | | | | | | | | |"
    ph = row["phases_s"]
    steps = ", ".join(_secs(t) for t in row["times_s"])
    return (head + f" | {steps} | {_secs(row['min_s'])} | {_secs(ph['forward_s'])} | "
            f"{_secs(ph['inner_s'])} | {_secs(ph['backward_s'])} | {ph['optimizer_s']:.3f} | {_mib(row)} | "
            f"{_mib(row, 'live_peak_bytes')} | {_left(row)} | "
            f"{row['load_avg_start'][0]:.2f} → {row['load_avg_end'][0]:.2f} |")
