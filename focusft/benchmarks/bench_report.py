"""The report of `focusft bench`: run the sweep, write ``benchmark.json`` and ``benchmark.md``.

`render_markdown` turns the report (`focusft.benchmarks.bench_sweep.run_benchmark`) into the
tables of docs/benchmark.md; nothing is measured here.
"""

from __future__ import annotations

import json
from pathlib import Path

from focusft.errors import UserError
from focusft.benchmarks.bench import (METHODS, REFERENCE_CPU, REFERENCE_SECONDS, describe_batch,
                                      resolve_device)
from focusft.benchmarks.bench_sweep import (_cell, growth_exponents, is_reference_model,
                                             run_benchmark, step_seconds)


def run_and_write(spec, command: str, out_dir: str) -> int:
    """Check the device, run the sweep of ``spec`` and write OUT/benchmark.json and .md."""
    if spec.device == "cuda" and resolve_device("auto") != "cuda":
        raise UserError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if spec.attention_kernel == "flex" and resolve_device(spec.device) != "cuda":
        raise UserError("--attention-kernel flex needs CUDA (FlexAttention has no CPU backward)")
    report = run_benchmark(spec, command, log=lambda line: print(line, flush=True))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "benchmark.md").write_text(render_markdown(report))
    print(f"wrote {out / 'benchmark.md'} and {out / 'benchmark.json'}")
    return 0


NAMES = {"sft-causal": "SFT-causal", "sft-glm": "SFT-GLM", "focusft": "FocuSFT"}


def _f(value, fmt: str = ".2f", missing: str = "–") -> str:
    return missing if value is None else format(value, fmt)


def _k(seq_len: int) -> str:
    return f"{seq_len // 1024}K" if seq_len % 1024 == 0 else str(seq_len)


def _mib(row, key: str = "peak_mem_bytes") -> str:
    return "–" if row is None or key not in row else f"{row[key] / 2**20:.0f}"


def render_markdown(report: dict) -> str:
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
        ("Clock: CPU time of the bench process (`time.process_time`, all its threads), not "
         "elapsed time: other jobs on the machine do not count  "
         if spec.get("clock") == "cpu" else "Clock: elapsed time (`time.perf_counter`)  "),
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
