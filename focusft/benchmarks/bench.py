"""Step cost of SFT-causal, SFT-GLM and FocuSFT: time and peak memory per training step.

One *step* is exactly what the trainer does per micro-batch, with the product's own functions::

    layout = batch_layout(batch, "causal" | "glm", kernel)          (focusft.core.step)
    [focusft] arm_inner(fast, bilevel, batch, seeds)   (fast-weight reset + inner job)
    loss    = outer_loss(model, batch, layout, None)                (focusft.core.step; for FocuSFT
                                                                      the K inner SGD steps run
                                                                      inside this forward)
    loss.backward(); AdamW.step(); zero_grad(set_to_none=True)   [focusft] fast.clear()

Same model (a Qwen2 built from its config, random weights) and the same batch for all methods:
batch 1, S tokens, the last ``response_tokens`` of them assistant tokens (one context block
[0, S - R), then one response block [S - R, S)); with ``turns`` = T, T turns of S / T tokens
each, the last ``RESPONSE_SHARE`` (1/8) of every turn its response (2T blocks, `turn_spans`).

Measurement (one fresh subprocess per (method, length), driven by the parent, so that every
peak-memory reading starts clean and an out-of-memory kill costs one cell, not the run):

* time: ``warmup`` steps, then ``repeats`` timed steps; the median (and min) is reported, plus
  the median of each phase (forward incl. inner loop, inner loop alone, backward, optimizer).
  The inner loop is timed by two forward pre-hooks on the first adapted layer, one registered
  before the FocuSFT hook and one after it. On CUDA every timer is preceded by a synchronize.
* peak memory, CPU: resident-set high-water mark (Linux ``VmHWM``) over all warm-up and timed
  steps, reset (``/proc/self/clear_refs`` = 5) after the model, batch and the AdamW state are
  built, minus the resident set at that moment: the step's own working memory (activations,
  gradients, transients). Where the high-water mark cannot be reset, ``ru_maxrss`` is used
  and the method says so. CUDA: ``max_memory_allocated`` minus ``memory_allocated`` at the
  same point.
* live tensors (CPU): one more step under ``torch.profiler`` with ``profile_memory=True``; the
  running sum of its allocation events gives the peak of live tensor bytes above the state at
  the step's start (no allocator or fragmentation overhead), and the sum at its end gives the
  bytes the step left allocated (0 for a step that frees what it made: anything else grows
  with every step).

The parent writes ``benchmark.json`` and ``benchmark.md`` (`focusft.benchmarks.bench_report`).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

METHODS = ("sft-causal", "sft-glm", "focusft")
RESPONSE_SHARE = 1 / 8  # of every turn, with --turns
RESULT_TAG = "FOCUSFT_BENCH_RESULT "
# Step seconds of the public reference code (default model, fp32, batch 1), measured once on
# REFERENCE_CPU; on another CPU the ratios against them compare two machines.
REFERENCE_CPU = "AMD EPYC, 2 CPUs"
REFERENCE_SECONDS = {
    1024: {"sft-causal": 0.59, "sft-glm": 0.64, "focusft": 1.34},
    4096: {"sft-causal": 4.14, "sft-glm": 11.11, "focusft": 14.39},
    8192: {"sft-causal": 13.33, "sft-glm": 22.88, "focusft": 52.47},
}


@dataclass
class ModelSpec:
    """The benchmark model: a Qwen2 decoder built from its config (random weights)."""

    layers: int = 8
    hidden: int = 256
    heads: int = 8
    kv_heads: int = 2
    intermediate: int = 704
    vocab: int = 2048
    dtype: str = "float32"  # float32 | bfloat16 | float16
    family: str = "qwen2"  # qwen2 | llama (the architecture built from the config)
    tied: bool = False  # input embedding and LM head share one matrix


TINY_MODEL = ModelSpec(layers=2, hidden=64, heads=4, kv_heads=2, intermediate=176, vocab=512)
# SmolLM2-135M-Instruct's shape (its config.json): the real base of `focusft experiment --task real`
SMOLLM2_MODEL = ModelSpec(layers=30, hidden=576, heads=9, kv_heads=3, intermediate=1536,
                          vocab=49152, family="llama", tied=True)
SHAPES = {"reference": ModelSpec(), "tiny": TINY_MODEL, "smollm2": SMOLLM2_MODEL}


@dataclass
class BenchSpec:
    """Everything one benchmark run needs (the resolved flags of `focusft bench`)."""

    model: ModelSpec = field(default_factory=ModelSpec)
    methods: tuple[str, ...] = METHODS
    lengths: tuple[int, ...] = (1024, 2048, 4096, 8192, 16384)
    repeats: int = 3
    warmup: int = 1
    response_tokens: int = 64
    turns: int = 0  # 0: one context block + response_tokens; T: T turns (RESPONSE_SHARE each)
    device: str = "auto"  # auto | cpu | cuda
    attention_kernel: str = "sdpa"  # sdpa (block-prefix SDPA) | flex (FlexAttention, CUDA only)
    live_memory: bool = True  # CPU: one extra profiled step for the live-tensor peak
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    clock: str = "wall"  # wall: perf_counter | cpu: this process's CPU time (CPU device only)
    inner_steps: int = 2
    inner_lr: float = 1.0
    fast_rank: int = 32
    fast_alpha: float = 64.0
    fast_layer_fraction: float = 0.35
    fast_target_modules: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")
    outer_lr: float = 1e-5
    seed: int = 0
    isolate: bool = True  # one subprocess per (method, length)
    interleave: bool = True  # step times: the methods interleaved repeat by repeat, per length
    config_timeout: float = 1800.0  # seconds per (method, length) subprocess

    def __post_init__(self):
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"--methods: unknown {bad}; choose from {', '.join(METHODS)}")
        if self.repeats < 1 or self.warmup < 0:
            raise ValueError("--repeats must be >= 1 and --warmup >= 0")
        if self.clock not in ("wall", "cpu"):
            raise ValueError(f"--clock {self.clock}: choose wall or cpu")
        if self.clock == "cpu" and self.device == "cuda":
            raise ValueError("--clock cpu times the CPU work of this process; a CUDA step needs "
                             "--clock wall")
        if self.turns < 0:
            raise ValueError(f"--turns {self.turns}: give a number of turns >= 1")
        short = [n for n in self.lengths if n <= self.response_tokens] if not self.turns else \
            [n for n in self.lengths if n < 2 * self.turns]
        if short and self.turns:
            raise ValueError(f"--lengths {short} are too short for {self.turns} turns (--turns): "
                             "every turn needs a context and a response token")
        if short:
            raise ValueError(f"--lengths {short} leave no context before the "
                             f"{self.response_tokens} response tokens (--response-tokens)")

    @classmethod
    def from_dict(cls, data: dict) -> "BenchSpec":
        data = dict(data)
        data["model"] = ModelSpec(**data["model"])
        for name in ("methods", "lengths", "fast_target_modules"):
            data[name] = tuple(data[name])
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def describe_batch(spec: dict) -> str:
    """The batch of a report's spec, in words."""
    if spec.get("turns"):
        return (f"1 sequence of S tokens in {spec['turns']} equal turns, the last "
                f"{RESPONSE_SHARE:.3g} of every turn its response ({2 * spec['turns']} blocks)")
    return (f"1 sequence of S tokens; the last {spec['response_tokens']} are the response "
            "(one context block, one response block)")


def parse_length(text: str) -> int:
    """'1k' -> 1024, '16K' -> 16384, '512' -> 512.

    >>> [parse_length(t) for t in ("1k", "16K", "512")]
    [1024, 16384, 512]
    """
    text = text.strip().lower()
    return int(float(text[:-1]) * 1024) if text.endswith("k") else int(text)


def cost_floor(inner_steps: int, fraction: float) -> float:
    """FocuSFT / SFT-GLM step-time floor of the cost model: (3 + 2 K f) / 3.

    Outer forward + backward = 3 forward units of the whole model; each inner step = a forward
    and an activation-only backward (no weight gradients) over the adapted fraction f.

    >>> round(cost_floor(2, 0.35), 3)
    1.467
    """
    return (3 + 2 * inner_steps * fraction) / 3


# --------------------------------------------------------------------------- one configuration
def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def build_model(spec: ModelSpec, max_len: int, device: str):
    """A Qwen2 / Llama causal LM with random weights, on the block-prefix ("focusft") attention."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from focusft.core import attention

    config_class, model_class = {"qwen2": (Qwen2Config, Qwen2ForCausalLM),
                                 "llama": (LlamaConfig, LlamaForCausalLM)}[spec.family]
    cfg = config_class(vocab_size=spec.vocab, hidden_size=spec.hidden,
                       intermediate_size=spec.intermediate, num_hidden_layers=spec.layers,
                       num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
                       max_position_embeddings=max_len, tie_word_embeddings=spec.tied)
    model = model_class(cfg).to(device=device, dtype=getattr(torch, spec.dtype))
    attention.use_focusft_attention(model)
    return model.train()


def turn_spans(seq_len: int, turns: int) -> list[tuple[int, int, int]]:
    """(start, response start, end) of each of `turns` turns: equal shares of the row, the
    last RESPONSE_SHARE of each (at least one token, at most all but one) its response.

    >>> turn_spans(32, 2)
    [(0, 14, 16), (16, 30, 32)]
    """
    spans = []
    for t in range(turns):
        a, b = t * seq_len // turns, (t + 1) * seq_len // turns
        response = min(max(1, round((b - a) * RESPONSE_SHARE)), b - a - 1)
        spans.append((a, b - response, b))
    return spans


def build_batch(seq_len: int, response_tokens: int, vocab: int, device: str, seed: int,
                turns: int = 0) -> dict:
    """Batch 1: one context block [0, S-R), one response block [S-R, S), or `turns` turns
    (`turn_spans`); labels shifted."""
    import torch

    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, vocab, (1, seq_len), generator=g)
    loss_mask = torch.zeros(1, seq_len, dtype=torch.bool)
    spans = turn_spans(seq_len, turns) if turns else [(0, seq_len - response_tokens, seq_len)]
    for _, response, end in spans:
        loss_mask[:, response:end] = True
    labels = torch.full((1, seq_len), -100)
    labels[:, :-1] = torch.where(loss_mask[:, 1:], input_ids[:, 1:], -100)
    batch = {"input_ids": input_ids, "loss_mask": loss_mask, "labels": labels,
             "attention_mask": torch.ones(1, seq_len, dtype=torch.long),
             "sample_ids": torch.zeros(1, dtype=torch.long)}
    return {k: v.to(device) for k, v in batch.items()}


class Clock:
    """perf_counter, synchronised with the device first (CUDA kernels are asynchronous); or,
    with kind "cpu", the CPU time of this process (all its threads): what the step itself
    computed, untouched by other jobs taking turns on the same cores. With one thread
    (--threads 1) it is the step's work; with several it also counts their spin-waits."""

    def __init__(self, device: str, kind: str = "wall"):
        import torch

        if kind == "cpu" and device == "cuda":
            raise ValueError("a CPU-time clock cannot time CUDA kernels")
        self.sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        self.read = time.process_time if kind == "cpu" else time.perf_counter

    def __call__(self) -> float:
        self.sync()
        return self.read()


class PeakMemory:
    """Peak working memory of what runs between `start()` and `peak()` (module docstring)."""

    def __init__(self, device: str):
        self.device, self.base = device, 0
        self.method = ""

    def start(self) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            self.method = "torch.cuda.max_memory_allocated - memory_allocated before the steps"
            return
        self.base = _proc_status_kib("VmRSS") * 1024
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.method = ("CPU resident-set high-water mark (VmHWM, reset after setup) minus the "
                           "resident set after model, batch and AdamW state were built")
        except OSError:
            self.method = ("CPU ru_maxrss (cannot reset; includes setup peaks) minus the resident "
                           "set after model, batch and AdamW state were built")

    def peak(self) -> int:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.base
        import resource

        hwm = _proc_status_kib("VmHWM") * 1024 if "VmHWM" in self.method else \
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return hwm - self.base


def _proc_status_kib(key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {key}")
    return int(match.group(1))


class Stepper:
    """One training step of `method` on (model, batch), with phase timings (module docstring)."""

    def __init__(self, model, batch: dict, method: str, spec: BenchSpec, device: str):
        import torch

        from focusft.core.fast_weights import FastWeights, decoder_layers
        from focusft.core.inner import InnerConfig
        from focusft.core.step import BilevelStep
        from focusft.training.trainer import sample_seed

        self.model, self.batch, self.method = model, batch, method
        self.attention = "causal" if method == "sft-causal" else "glm"
        self.kernel = spec.attention_kernel
        self.clock = Clock(device, spec.clock)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=spec.outer_lr, weight_decay=0.01)
        self.fast = self.bilevel = None
        self._inner_t: list[float] = []
        if method == "focusft":
            self.fast = FastWeights(model, rank=spec.fast_rank, alpha=spec.fast_alpha,
                                    layer_fraction=spec.fast_layer_fraction,
                                    target_modules=spec.fast_target_modules)
            first = decoder_layers(model)[self.fast.first_layer]
            first.register_forward_pre_hook(self._inner_starts)  # fires before FocuSFT's hook
            self.bilevel = BilevelStep(model, self.fast, InnerConfig(steps=spec.inner_steps,
                                                                     lr=spec.inner_lr))
            first.register_forward_pre_hook(self._inner_ended)  # fires after it
            self.seeds = [sample_seed(spec.seed, 0, 0)]

    def _inner_starts(self, module, args) -> None:
        if self.bilevel.job is not None:  # armed: this call is the outer forward's
            self._inner_t = [self.clock()]

    def _inner_ended(self, module, args) -> None:
        # Also fires on the inner loop's own calls of this layer (nested, earlier); the last
        # firing of the step is the outer forward's, right after the inner loop returned.
        if self._inner_t:
            self._inner_t[1:] = [self.clock()]

    def prime_optimizer(self) -> None:
        """Allocate the AdamW state (zero gradients), so that it counts as setup, not step."""
        for p in self.model.parameters():
            p.grad = p.detach().new_zeros(p.shape)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def __call__(self) -> dict:
        from focusft.core.step import arm_inner, batch_layout, outer_loss

        self._inner_t = []
        t0 = self.clock()
        layout = batch_layout(self.batch, self.attention, self.kernel)
        if self.bilevel is not None:
            arm_inner(self.fast, self.bilevel, self.batch, self.seeds, "response", self.kernel)
        loss, _ = outer_loss(self.model, self.batch, layout, None)
        t1 = self.clock()
        loss.backward()
        t2 = self.clock()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.fast is not None:  # as the trainer does: outside a step the model is the base model
            self.fast.clear()
        t3 = self.clock()
        inner = self._inner_t[1] - self._inner_t[0] if len(self._inner_t) == 2 else 0.0
        return {"step_s": t3 - t0, "forward_s": t1 - t0, "inner_s": inner,
                "backward_s": t2 - t1, "optimizer_s": t3 - t2, "loss": float(loss.detach())}


def _setup(spec: BenchSpec, seq_len: int):
    """(device, model, batch, load average at the start) of one measurement, seeded."""
    import torch

    if spec.threads > 0:
        torch.set_num_threads(spec.threads)
    device = resolve_device(spec.device)
    torch.manual_seed(spec.seed)
    load_start = os.getloadavg()
    model = build_model(spec.model, seq_len, device)
    batch = build_batch(seq_len, spec.response_tokens, spec.model.vocab, device, spec.seed, spec.turns)
    return device, model, batch, load_start


def measure(spec: BenchSpec, method: str, seq_len: int) -> dict:
    """Time and peak memory of `method` at `seq_len`, in this process."""
    import torch

    device, model, batch, load_start = _setup(spec, seq_len)
    stepper = Stepper(model, batch, method, spec, device)
    stepper.prime_optimizer()
    memory = PeakMemory(device)
    memory.start()
    warm = [stepper() for _ in range(spec.warmup)]
    timed = [stepper() for _ in range(spec.repeats)]
    peak = memory.peak()
    live = live_tensor_memory(stepper) if spec.live_memory and device == "cpu" else {}
    return {
        "method": method, "seq_len": seq_len, "status": "ok", "device": device,
        "threads": torch.get_num_threads(),
        "times_s": [t["step_s"] for t in timed], "warmup_s": [t["step_s"] for t in warm],
        "median_s": statistics.median(t["step_s"] for t in timed),
        "min_s": min(t["step_s"] for t in timed),
        "phases_s": {k: statistics.median(t[k] for t in timed)
                     for k in ("forward_s", "inner_s", "backward_s", "optimizer_s")},
        "peak_mem_bytes": peak, "baseline_mem_bytes": memory.base, "mem_method": memory.method,
        "losses": [t["loss"] for t in warm + timed], **live,
        "load_avg_start": load_start, "load_avg_end": os.getloadavg(),
    }


def measure_interleaved(spec: BenchSpec, seq_len: int) -> dict:
    """Step times of every method at ``seq_len`` in one process, interleaved repeat by repeat
    (A B C A B C ...): one model and batch, one `Stepper` (and AdamW) per method; each method's
    warm-up first, then ``repeats`` rounds of one timed step per method. A slow drift of the
    machine then moves every method of a round alike, so a ratio is taken within each round
    (pair by pair) and summarised over rounds by its median and range (`bench_sweep.ratios`)."""
    device, model, batch, load_start = _setup(spec, seq_len)
    steppers = {m: Stepper(model, batch, m, spec, device) for m in spec.methods}
    for stepper in steppers.values():
        stepper.prime_optimizer()
        for _ in range(spec.warmup):
            stepper()
    rounds = [{m: stepper()["step_s"] for m, stepper in steppers.items()}
              for _ in range(spec.repeats)]
    return {"seq_len": seq_len, "status": "ok", "order": list(spec.methods), "rounds": rounds,
            "median_s": {m: statistics.median(r[m] for r in rounds) for m in spec.methods},
            "load_avg_start": load_start, "load_avg_end": os.getloadavg()}


def live_tensor_memory(stepper: Stepper) -> dict:
    """Peak and retained live tensor bytes of one step, from the profiler's allocation events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        stepper()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return {"live_peak_bytes": peak, "retained_bytes": live}


def measure_isolated(spec: BenchSpec, method: str | None, seq_len: int) -> dict:
    """`measure` (``method=None``: `measure_interleaved`) in a fresh subprocess (clean peak
    memory); failures become a result row."""
    payload = json.dumps({"spec": asdict(spec), "method": method, "seq_len": seq_len})
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "focusft.benchmarks.bench", payload]
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                              timeout=spec.config_timeout)
    except subprocess.TimeoutExpired:
        return _failed(method, seq_len, "timeout", f"over --config-timeout {spec.config_timeout:g} s")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    status = "killed (out of memory?)" if proc.returncode in (-9, 137) else "error"
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return _failed(method, seq_len, status,
                   f"exit {proc.returncode} after {time.perf_counter() - started:.0f} s: "
                   + " | ".join(tail))


def _failed(method: str, seq_len: int, status: str, why: str) -> dict:
    return {"method": method, "seq_len": seq_len, "status": status, "reason": why}


def _worker(argv: list[str]) -> int:
    job = json.loads(argv[0])
    spec = BenchSpec.from_dict(job["spec"])
    result = (measure_interleaved(spec, job["seq_len"]) if job["method"] is None
              else measure(spec, job["method"], job["seq_len"]))
    print(RESULT_TAG + json.dumps(result), flush=True)
    return 0

if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
