"""The benchmark sweep over methods and lengths (`focusft bench`), and what its report derives.

Each (method, length) cell is measured in its own subprocess by `focusft.benchmarks.bench`
(``measure_isolated``); here: the order of the cells, skipping lengths that cannot fit,
machine facts, and the ratios / growth exponents / targets the report prints.
"""

from __future__ import annotations

import math
import os
import platform
import re
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path

from focusft.benchmarks.bench import (METHODS, REFERENCE_SECONDS, BenchSpec, ModelSpec, _failed,
                                       cost_floor, measure, measure_interleaved, measure_isolated,
                                       resolve_device)


# --------------------------------------------------------------------------- the sweep
def skip_reason(previous: dict | None, seq_len: int, spec: BenchSpec) -> str | None:
    """Why a larger length would not fit, judged from the same method's previous length."""
    if previous is None:
        return None
    if previous["status"] != "ok":
        return f"{previous['status']} at {previous['seq_len']} tokens"
    growth = seq_len / previous["seq_len"]
    mem = previous["peak_mem_bytes"] * growth * 1.2
    available = _available_memory(resolve_device(spec.device))
    if available is not None and mem > 0.85 * available:
        return f"predicted peak {mem / 2**30:.1f} GiB > 85% of available {available / 2**30:.1f} GiB"
    secs = previous["median_s"] * growth ** 2 * (spec.warmup + spec.repeats)
    if secs > spec.config_timeout:
        return f"predicted {secs:.0f} s > --config-timeout {spec.config_timeout:g} s"
    return None


def _available_memory(device: str) -> int | None:
    if device == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
        return free
    try:
        return _meminfo_kib("MemAvailable") * 1024
    except (OSError, RuntimeError):
        return None


def _meminfo_kib(key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    if match is None:
        raise RuntimeError(f"/proc/meminfo has no {key}")
    return int(match.group(1))


def run_sweep(spec: BenchSpec, log=print) -> tuple[list[dict], list[dict]]:
    """(cells, interleaved rows), length-major. Per length: one cell per method (its own
    process: peak memory, phases; with ``interleave`` a single timed step, since the step time
    comes from the next part), then the methods whose cell fitted, interleaved repeat by repeat
    in one process (`bench.measure_interleaved`): the step times and their ratios."""
    results, interleaved, last = [], [], {}
    cell_spec = replace(spec, repeats=1) if spec.interleave else spec
    for seq_len in spec.lengths:
        for method in spec.methods:
            reason = skip_reason(last.get(method), seq_len, spec)
            if reason is not None:
                row = _failed(method, seq_len, "skipped", reason)
            else:
                run = measure_isolated if spec.isolate else measure
                row = run(cell_spec, method, seq_len)
                last[method] = row
            results.append(row)
            log(_progress_line(row))
        fitted = tuple(r["method"] for r in results if r["seq_len"] == seq_len and r["status"] == "ok")
        if spec.interleave and len(fitted) > 1:
            run = measure_isolated if spec.isolate else (lambda s, _, n: measure_interleaved(s, n))
            row = run(replace(spec, methods=fitted), None, seq_len)
            interleaved.append(row)
            log(_interleaved_line(row))
    return results, interleaved


def _interleaved_line(row: dict) -> str:
    if row["status"] != "ok":
        return f"interleaved S={row['seq_len']:>6}: {row['status']} ({row['reason']})"
    medians = ", ".join(f"{m} {s:.3f} s" for m, s in row["median_s"].items())
    return f"interleaved S={row['seq_len']:>6}: medians {medians}"


def _progress_line(row: dict) -> str:
    if row["status"] != "ok":
        return f"{row['method']:>10} S={row['seq_len']:>6}: {row['status']} ({row['reason']})"
    return (f"{row['method']:>10} S={row['seq_len']:>6}: median {row['median_s']:.3f} s, "
            f"peak +{row['peak_mem_bytes'] / 2**20:.0f} MiB, load {row['load_avg_end'][0]:.2f}")


def machine_info(spec: BenchSpec) -> dict:
    import torch
    import transformers

    device = resolve_device(spec.device)
    cpu = platform.processor() or platform.machine()
    try:
        names = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info = {"cpu": cpu, "cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "device": device,
            "torch_threads": spec.threads or torch.get_num_threads()}
    try:
        info["memory_gib"] = round(_meminfo_kib("MemTotal") / 2**20, 1)
    except (OSError, RuntimeError):
        pass
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def run_benchmark(spec: BenchSpec, command: str, log=print) -> dict:
    """Run the sweep and assemble the report (`focusft.benchmarks.bench_report` writes it)."""
    from focusft.core.models import adapted_layer_indices

    load_start = os.getloadavg()
    started = time.time()
    results, interleaved = run_sweep(spec, log)
    adapted = len(adapted_layer_indices(spec.model.layers, spec.fast_layer_fraction))
    report = {
        "command": command, "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "wall_s": round(time.time() - started, 1), "machine": machine_info(spec),
        "load_avg_start": load_start, "load_avg_end": os.getloadavg(), "spec": asdict(spec),
        "adapted_layers": adapted,
        "cost_floor": {"issue": cost_floor(spec.inner_steps, spec.fast_layer_fraction),
                       "actual_layers": cost_floor(spec.inner_steps, adapted / spec.model.layers)},
        "results": results, "interleaved": interleaved,
    }
    report["ratios"] = ratios(report)
    report["targets"] = targets(report)
    return report


def _cell(results: list[dict], method: str, seq_len: int) -> dict | None:
    for row in results:
        if row["method"] == method and row["seq_len"] == seq_len and row["status"] == "ok":
            return row
    return None


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def is_reference_model(spec: dict) -> bool:
    """The reference table applies to the default model, fp32, on CPU only."""
    return (spec["model"] == asdict(ModelSpec()) and spec["response_tokens"] == 64
            and not spec.get("turns"))


def interleaved_row(report: dict, seq_len: int) -> dict | None:
    for row in report.get("interleaved", []):
        if row["seq_len"] == seq_len and row["status"] == "ok":
            return row
    return None


def step_seconds(report: dict, method: str, seq_len: int) -> float | None:
    """The step time of a method: the median of its interleaved rounds when measured so, else
    its cell's median."""
    row = interleaved_row(report, seq_len)
    if row is not None and method in row["median_s"]:
        return row["median_s"][method]
    cell = _cell(report["results"], method, seq_len)
    return cell["median_s"] if cell else None


def pairwise(report: dict, seq_len: int, num: str, den: str) -> dict | None:
    """{median, min, max, n} of num / den taken round by round (both measured in each round)."""
    row = interleaved_row(report, seq_len)
    if row is None or num not in row["median_s"] or den not in row["median_s"]:
        return None
    values = sorted(r[num] / r[den] for r in row["rounds"])
    return {"median": statistics.median(values), "min": values[0], "max": values[-1],
            "n": len(values)}


def ratios(report: dict) -> list[dict]:
    rows, res = [], report["results"]
    reference = is_reference_model(report["spec"]) and report["machine"]["device"] == "cpu"
    for seq_len in report["spec"]["lengths"]:
        c, g, f = (_cell(res, m, seq_len) for m in METHODS)
        t = {m: step_seconds(report, m, seq_len) for m in METHODS}
        fg, gc = pairwise(report, seq_len, "focusft", "sft-glm"), pairwise(report, seq_len, "sft-glm", "sft-causal")
        mem = {m: (row["peak_mem_bytes"] if row else None) for m, row in zip(METHODS, (c, g, f))}
        live = {m: (row.get("live_peak_bytes") if row else None) for m, row in zip(METHODS, (c, g, f))}
        ref = REFERENCE_SECONDS.get(seq_len, {}) if reference else {}
        rows.append({
            "seq_len": seq_len,
            "focusft_over_glm": fg["median"] if fg else _div(t["focusft"], t["sft-glm"]),
            "glm_over_causal": gc["median"] if gc else _div(t["sft-glm"], t["sft-causal"]),
            "focusft_over_glm_pairs": fg, "glm_over_causal_pairs": gc,
            "mem_focusft_over_causal": _div(mem["focusft"], mem["sft-causal"]),
            "live_mem_focusft_over_causal": _div(live["focusft"], live["sft-causal"]),
            "inner_share_of_glm": _div(f["phases_s"]["inner_s"] if f else None, t["sft-glm"]),
            "focusft_over_reference": _div(t["focusft"], ref.get("focusft")),
            "glm_over_reference": _div(t["sft-glm"], ref.get("sft-glm")),
            "causal_over_reference": _div(t["sft-causal"], ref.get("sft-causal")),
        })
    return rows


def growth_exponents(results: list[dict], method: str, key: str) -> list[tuple[int, float]]:
    """log2 growth of `key` per doubling of S between consecutive measured lengths."""
    cells = sorted((r["seq_len"], r[key]) for r in results
                   if r["method"] == method and r["status"] == "ok" and r[key] > 0)
    return [(s2, math.log(v2 / v1) / math.log(s2 / s1))
            for (s1, v1), (s2, v2) in zip(cells, cells[1:])]


def targets(report: dict) -> list[dict]:
    """The issue's targets, each with the measured value and whether it holds (None: not measured)."""
    by_len = {r["seq_len"]: r for r in report["ratios"]}
    out = []
    for s in (1024, 2048, 4096, 8192, 16384):
        v = by_len.get(s, {}).get("focusft_over_glm")
        out.append(_target(f"FocuSFT / SFT-GLM at {s // 1024}K", "<=", 1.55, v))
    for s in (4096, 8192):
        v = by_len.get(s, {}).get("focusft_over_reference")
        out.append(_target(f"FocuSFT at {s // 1024}K / reference FocuSFT", "<=", 0.5, v))
    out.append(_target("SFT-GLM / SFT-causal at 8K", "<=", 1.9,
                       by_len.get(8192, {}).get("glm_over_causal")))
    out.append(_target("peak memory (RSS) FocuSFT / SFT-causal at 16K", "<=", 1.25,
                       by_len.get(16384, {}).get("mem_focusft_over_causal")))
    out.append(_target("peak live tensors FocuSFT / SFT-causal at 16K", "<=", 1.25,
                       by_len.get(16384, {}).get("live_mem_focusft_over_causal")))
    worst = [e for m in METHODS
             for s, e in growth_exponents(report["results"], m, "peak_mem_bytes") if s >= 4096]
    out.append(_target("peak-memory growth exponent, S >= 4K (2 = S^2)", "<=", 1.2,
                       max(worst) if worst else None))
    kept = [r["retained_bytes"] for r in report["results"] if "retained_bytes" in r]
    out.append(_target("bytes a step leaves allocated (max over cells), MiB", "<=", 1.0,
                       max(kept) / 2**20 if kept else None))
    return out


def _target(name: str, op: str, threshold: float, value: float | None) -> dict:
    holds = None if value is None else value <= threshold
    return {"target": name, "threshold": f"{op} {threshold:g}", "value": value, "holds": holds}
