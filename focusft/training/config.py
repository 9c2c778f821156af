"""One typed configuration: `FocusConfig`, a `transformers.TrainingArguments` with the method's knobs.

Every field has help text (shown by ``focusft train --help``). A YAML file (``--config``) gives
values, command-line flags override it; both go through the same typed parser, so a bad value
is reported with the flag's name. Defaults follow the paper's main configuration (METHOD.md)
where it sets one: AdamW lr 1e-5, cosine, 10% warm-up, weight decay 0.01, grad-norm clip 1.0,
K = 2 inner SGD steps at lr 1.0 with per-tensor clipping at 1.0, LoRA rank 32 / alpha 64 on the
MLP projections of the top 35% of layers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml
from transformers import HfArgumentParser, TrainingArguments

from focusft.errors import UserError
from focusft.sources import rope_scaling

CHOICES = {
    "method": ("focusft", "sft"),
    "attention": ("glm", "causal"),
    "attention_kernel": ("sdpa", "flex"),
    "truncation": ("error", "left", "right"),
    "inner_clip_mode": ("tensor", "global"),
    "inner_objective": ("response", "context"),
    "bnb_4bit_quant_type": ("nf4", "fp4"),
}


def _help(text: str, **extra) -> dict:
    return {"help": text, **extra}


def _several(text: str) -> dict:
    """Metadata of a flag that takes several values: space- or comma-separated (TRL's form and
    the comma form), in a YAML config also a list."""
    return {"help": text + " Several: space- or comma-separated.", "nargs": "+"}


@dataclass
class FocusConfig(TrainingArguments):
    # --- model and data ------------------------------------------------------------------
    model: str | None = field(default=None, metadata=_help(
        "Model directory, hub name, or a .gguf file (dequantized on load; see `focusft model`). "
        "Unset: the embedded tiny default (built locally)."))
    data: str | None = field(default=None, metadata=_several(
        "Training data: .parquet, .jsonl, .json, a glob, a directory of them or a saved datasets "
        "directory, with a `messages` column (or prompt/completion, ShareGPT, Alpaca). Unset: the "
        "embedded default's generated set."))
    eval_data: str | None = field(default=None, metadata=_several(
        "Optional held-out data, same formats."))
    max_length: int = field(default=4096, metadata=_help("Maximum tokens per sample."))
    rope_scaling: dict | str | None = field(default=None, metadata=_help(
        "RoPE scaling applied to the model's config before it is built, to train past its native "
        "window: a JSON object ('{\"rope_type\": \"yarn\", \"factor\": 4.0}') or key=value pairs "
        "(type=yarn,factor=4; rope_type=linear,factor=2). Types: transformers' (linear, dynamic, "
        "yarn, longrope, llama3, ...), each with its keys (llama3: low_freq_factor, "
        "high_freq_factor); yarn's original_max_position_embeddings defaults to the model's "
        "max_position_embeddings. Saved in final/config.json. Unset: the model's own."))
    truncation: str = field(default="error", metadata=_help(
        "Samples longer than --max_length: error | left (drop the start) | right (drop the end)."))
    packing: bool = field(default=False, metadata=_help(
        "Pack the samples of a micro-batch into rows of at most --max_length tokens (no "
        "attention across samples; each keeps its own fast weights and positions)."))
    empty_think_loss: bool = field(default=False, metadata=_help(
        "Train the empty think block (<think></think>) a chat template inserts into an assistant "
        "turn that has no reasoning (Qwen3-style templates). False: it is context. Reasoning the "
        "data supplies is trained wherever the template renders it."))
    dataset_num_proc: int | None = field(default=None, metadata=_help(
        "Processes that tokenize the data (datasets' map num_proc). Unset: one."))
    trust_remote_code: bool = field(default=False, metadata=_help(
        "Allow model/tokenizer code from the model directory to run. Off unless you ask."))
    # --- outer PEFT: LoRA / QLoRA as what the outer loop trains (TRL's names) --------------
    use_peft: bool = field(default=False, metadata=_help(
        "Train LoRA adapters (the outer loop) instead of the full model; the fast weights of "
        "the inner loop are unchanged and may sit on the same Linears."))
    lora_r: int = field(default=16, metadata=_help("Outer LoRA rank."))
    lora_alpha: int = field(default=32, metadata=_help("Outer LoRA alpha (scale alpha / r)."))
    lora_dropout: float = field(default=0.05, metadata=_help("Outer LoRA dropout."))
    lora_target_modules: list[str] | None = field(default=None, metadata=_help(
        "Module names for the outer LoRA (e.g. q_proj v_proj, or q_proj,v_proj, or all-linear). "
        "Unset: PEFT's default for the architecture."))
    load_in_4bit: bool = field(default=False, metadata=_help(
        "Load the base model 4-bit with bitsandbytes (QLoRA; needs --use_peft)."))
    load_in_8bit: bool = field(default=False, metadata=_help(
        "Load the base model 8-bit with bitsandbytes (needs --use_peft)."))
    bnb_4bit_quant_type: str = field(default="nf4", metadata=_help("4-bit quantization: nf4 | fp4."))
    use_bnb_nested_quant: bool = field(default=False, metadata=_help(
        "Quantize the 4-bit quantization constants too (double quantization)."))
    merge_adapter: bool = field(default=False, metadata=_help(
        "With PEFT: save final/ as a plain model with the adapter merged into the (unquantized) "
        "base. Default: save the adapter alone."))
    # --- the method ----------------------------------------------------------------------
    method: str = field(default="focusft", metadata=_help(
        "focusft (bilevel: inner fast-weight loop, then the SFT update) | sft (plain SFT)."))
    attention: str = field(default="glm", metadata=_help(
        "glm (context turns bidirectional, responses causal) | causal (plain causal mask)."))
    attention_kernel: str = field(default="sdpa", metadata=_help(
        "sdpa (block by block through SDPA; CPU and CUDA) | flex (one FlexAttention BlockMask "
        "call, compiled; CUDA only: FlexAttention has no CPU backward in torch 2.13; not yet run on "
        "a GPU, scripts/gpu_check.sh is its check)."))
    inner_steps: int = field(default=2, metadata=_help(
        "Inner SGD steps K per micro-batch (0 = SFT). If the trainer warns that the inner loop "
        "hurts (inner_harm above --harm_warn_ratio), fewer steps (1) is one fix."))
    inner_lr: float = field(default=1.0, metadata=_help(
        "Inner SGD learning rate (the paper's 1.0). Too high for a base and the adapted fast "
        "weights wreck the outer loss: the trainer logs inner_harm (outer loss with the adapted "
        "fast weights / without them) and warns above --harm_warn_ratio; lower it (0.1, 0.01)."))
    inner_clip: float = field(default=1.0, metadata=_help(
        "Inner gradient-norm clip (per sample); <= 0 disables."))
    inner_clip_mode: str = field(default="tensor", metadata=_help(
        "tensor (each fast tensor clipped on its own, as the reference) | global (one norm)."))
    inner_objective: str = field(default="response", metadata=_help(
        "response (assistant-token CE, the reference) | context (next-token CE on context "
        "blocks, computed under the causal mask since a bidirectional block sees its next token)."))
    fast_rank: int = field(default=32, metadata=_help("Rank r of the fast LoRA factors."))
    fast_alpha: float = field(default=64.0, metadata=_help("LoRA alpha; the update is scaled by alpha/r."))
    fast_dropout: float = field(default=0.0, metadata=_help("Dropout on the fast-weight input path."))
    fast_layer_fraction: float = field(default=0.35, metadata=_help(
        "Fraction of top decoder layers with fast weights: layers int(L*(1-f)) .. L-1."))
    fast_target_modules: list[str] = field(
        default_factory=lambda: ["auto"],
        metadata=_help("Names of the Linear modules in each adapted layer that get fast weights "
                       "(space- or comma-separated); auto: every Linear of the layer's MLP "
                       "(gate_proj, up_proj, down_proj on Llama-style models), the attention "
                       "projections in mixture-of-experts layers (README 'Supported models')."))
    skip_model_check: bool = field(default=False, metadata=_help(
        "UNSAFE: skip the model self-check before the first step (focusft's attention, inner-loop "
        "logits and loss compared with the model's own eager forward on a tiny probe). Without it "
        "an unsupported architecture can train silently wrong."))
    eval_inner_loop: bool = field(default=False, metadata=_help(
        "With --method focusft, evaluation also reports eval_focus_loss: the loss after the inner "
        "loop has adapted fresh fast weights on each eval sample (the inner loop's K forward + "
        "backward passes per eval batch: several times a plain evaluation). eval_loss is always "
        "the saved model's own loss (no fast weights)."))
    leak_warn_ratio: float = field(default=0.1, metadata=_help(
        "Warn when the outer loss stays below this fraction of the base (pre-adaptation) loss."))
    leak_warn_patience: int = field(default=3, metadata=_help(
        "... for this many consecutive logging windows (leakage of the label into fast weights)."))
    harm_warn_ratio: float = field(default=1.5, metadata=_help(
        "Warn when inner_harm, the outer loss with the adapted fast weights over the loss without "
        "them, stays above this (the inner loop makes predictions worse: lower --inner_lr or "
        "--inner_steps)."))
    harm_warn_patience: int = field(default=2, metadata=_help(
        "... for this many consecutive logging windows."))
    # --- attention diagnostics during training (focusft.diagnostics) -----------------------
    diagnostics_steps: int = field(default=0, metadata=_help(
        "Every N optimizer steps (and before the first), measure sink mass and context "
        "engagement on a fixed probe batch; log them as diag/* and append to "
        "output_dir/diagnostics.jsonl. 0 = off."))
    diagnostics_samples: int = field(default=8, metadata=_help(
        "Probe batch size: the first N rows of --eval_data (else the embedded default's "
        "held-out rows, or the training rows of --data)."))
    diagnostics_mask: str = field(default="causal", metadata=_several(
        "Mask(s) the probe is measured under: causal (as the model is used at inference, the "
        "same for every method) | glm (as FocuSFT trains); e.g. glm causal. The first is logged "
        "as diag/*, the others as diag_<mask>/*."))
    # --- distribution (launchers and engines: docs/distributed.md) ---------------------------
    sp_size: int = field(default=1, metadata=_help(
        "Sequence-parallel degree (Ulysses, as accelerate's ParallelismConfig sp_size): each "
        "sequence is split over N consecutive ranks, which attend over all of it for a share of "
        "the heads; the processes must be a multiple of N, the attention heads too. "
        "docs/distributed.md."))

    # --- changed defaults of TrainingArguments ---------------------------------------------
    output_dir: str | None = field(default="runs/focusft", metadata=_help("Where checkpoints go."))
    learning_rate: float = field(default=1e-5, metadata=_help("Outer AdamW learning rate."))
    lr_scheduler_type: str = field(default="cosine", metadata=_help("Outer learning-rate schedule."))
    warmup_steps: float = field(default=0.1, metadata=_help(
        "Warm-up: steps, or a fraction of all steps when < 1."))
    weight_decay: float = field(default=0.01, metadata=_help("Outer AdamW weight decay."))
    num_train_epochs: float = field(default=5.0, metadata=_help("Training epochs."))
    per_device_train_batch_size: int = field(default=1, metadata=_help("Samples per device per micro-batch."))
    logging_steps: float = field(default=10, metadata=_help("Log every N optimizer steps."))
    save_strategy: str = field(default="no", metadata=_help("no | steps | epoch (the final model is always saved)."))
    report_to: None | str | list[str] = field(default="none", metadata=_several(
        "Integrations to report to (e.g. tensorboard wandb), all, or none."))
    optim_target_modules: None | str | list[str] = field(default=None, metadata=_several(
        "Modules the optimizer targets (GaLore, APOLLO...): one regex, or several names."))

    @property
    def diagnostics_masks(self) -> list[str]:
        return [m.strip() for m in self.diagnostics_mask.split(",") if m.strip()]

    def __post_init__(self):
        _gather_lists(self)
        self.rope_scaling = rope_scaling.parse(self.rope_scaling)
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"--{name} must be one of {' | '.join(allowed)}, got {getattr(self, name)!r}")
        masks = self.diagnostics_masks
        if not masks or any(m not in ("causal", "glm") for m in masks) or len(set(masks)) < len(masks):
            raise UserError("--diagnostics_mask must be causal, glm, or both comma-separated, got "
                            f"{self.diagnostics_mask!r}")
        _check_range("max_length", self.max_length, low=2)
        _check_range("inner_steps", self.inner_steps, low=0)
        _check_range("harm_warn_patience", self.harm_warn_patience, low=1)
        _check_range("fast_rank", self.fast_rank, low=1)
        _check_range("fast_layer_fraction", self.fast_layer_fraction, low=0.0, high=1.0, low_open=True)
        _check_range("fast_dropout", self.fast_dropout, low=0.0, high=1.0)
        _check_range("diagnostics_steps", self.diagnostics_steps, low=0)
        _check_range("diagnostics_samples", self.diagnostics_samples, low=1)
        _check_training_values(self)
        _check_range("sp_size", self.sp_size, low=1)
        if self.sp_size > 1 and self.packing:
            raise UserError(f"--sp_size {self.sp_size} with --packing true is not supported: "
                            "pack without sequence parallelism, or split unpacked rows")
        if self.attention_kernel == "flex" and not _cuda_available():
            raise UserError("--attention_kernel flex needs a CUDA device (FlexAttention has no "
                            "CPU backward); use --attention_kernel sdpa")
        if not self.fast_target_modules:
            raise UserError("--fast_target_modules must name at least one Linear module")
        super().__post_init__()

    @property
    def bilevel(self) -> bool:
        return self.method == "focusft"

    def to_yaml(self) -> str:
        """The resolved configuration, as written next to checkpoints; reads back as ``--config``.

        Every field (enums as their values, the accelerator config as a mapping), except the
        secrets (``*_token``), which are never written.
        """
        values = {k: v for k, v in self.to_dict().items() if not k.endswith("_token")}
        return yaml.safe_dump(json.loads(json.dumps(values, default=str)), sort_keys=True)


# (flag, low, low excluded): values that would crash the run later, or silently do nothing.
_POSITIVE_INTS = ("per_device_train_batch_size", "per_device_eval_batch_size",
                  "gradient_accumulation_steps")
_FINITE = (("learning_rate", 0.0, False), ("weight_decay", 0.0, False), ("inner_lr", 0.0, False),
           ("inner_clip", None, False), ("fast_alpha", 0.0, True), ("leak_warn_ratio", 0.0, False),
           ("harm_warn_ratio", 0.0, True),
           ("max_grad_norm", 0.0, False), ("warmup_steps", 0.0, False), ("logging_steps", 0.0, True),
           ("adam_epsilon", 0.0, True), ("num_train_epochs", None, False))


def _check_training_values(cfg) -> None:
    for name in _POSITIVE_INTS:
        _check_range(name, getattr(cfg, name), low=1)
    for name, low, low_open in _FINITE:
        value = getattr(cfg, name)
        if not math.isfinite(value):
            raise UserError(f"--{name} must be a finite number, got {value}")
        if low is not None:
            _check_range(name, value, low=low, low_open=low_open)
    for name in ("adam_beta1", "adam_beta2"):
        value = getattr(cfg, name)
        if not (math.isfinite(value) and 0.0 <= value < 1.0):
            raise UserError(f"--{name} must be in [0.0, 1.0), got {value}")
    if cfg.max_steps == 0 or cfg.max_steps < -1:
        raise UserError(f"--max_steps must be >= 1 (or -1: unset, train --num_train_epochs), "
                        f"got {cfg.max_steps}")
    if cfg.max_steps == -1 and cfg.num_train_epochs <= 0:
        raise UserError(f"--num_train_epochs must be > 0 (or set --max_steps), got "
                        f"{cfg.num_train_epochs}: the run would save the untrained model")
    if cfg.dataset_num_proc is not None:
        _check_range("dataset_num_proc", cfg.dataset_num_proc, low=1)


def _check_range(flag, value, low=None, high=None, low_open=False):
    too_low = low is not None and (value <= low if low_open else value < low)
    if too_low or (high is not None and value > high):
        bounds = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'}]"
        raise UserError(f"--{flag} must be in {bounds}, got {value}")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def field_names() -> set[str]:
    return {f.name for f in fields(FocusConfig) if f.init}


def yaml_to_flags(path: str) -> list[str]:
    """Turn a YAML config into command-line flags, so one typed parser checks both."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--config {path}: no such file")
    try:
        values = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"--config {path}: not valid YAML ({err})") from None
    if not isinstance(values, dict):
        raise UserError(f"--config {path}: expected a mapping of option: value at the top level")
    unknown = sorted(set(values) - field_names())
    if unknown:
        raise UserError(f"--config {path}: unknown key(s) {unknown}; see `focusft train --help`")
    flags = []
    list_fields = _list_fields()
    for key, value in values.items():
        if value is None or value == []:  # unset, or an empty list (every such default is empty)
            continue
        if isinstance(value, list) and key not in list_fields:
            raise UserError(f"--config {path}: key '{key}' is a list ({value!r}) but --{key} takes "
                            "one value; write it as a single value")
        if isinstance(value, list):
            flags += [f"--{key}", *map(str, value)]
        elif isinstance(value, dict):
            flags += [f"--{key}", json.dumps(value)]
        else:
            flags += [f"--{key}", str(value)]
    return flags


# Fields whose several values are kept as one string, joined by this separator.
_JOINED = {"data": ",", "eval_data": ",", "diagnostics_mask": ","}
# List fields of names, where a comma inside one value separates two names.
_NAME_LISTS = ("lora_target_modules", "fast_target_modules", "label_names", "include_for_metrics",
               "report_to", "optim_target_modules")


def _gather_lists(cfg) -> None:
    """Bring every list-valued field to one form, whichever way it was given (flags, YAML, code):
    lists of names split at commas; joined fields back to their string; one optimizer target
    stays a string (a regex, as TrainingArguments reads it)."""
    for name, separator in _JOINED.items():
        value = getattr(cfg, name)
        if isinstance(value, (list, tuple)):
            setattr(cfg, name, separator.join(_split(value)) or None)
    for name in _NAME_LISTS:
        value = getattr(cfg, name)
        if isinstance(value, (list, tuple)):
            setattr(cfg, name, _split(value))
        elif isinstance(value, str) and "," in value and name != "optim_target_modules":
            setattr(cfg, name, _split([value]))
    if isinstance(cfg.optim_target_modules, list) and len(cfg.optim_target_modules) == 1:
        cfg.optim_target_modules = cfg.optim_target_modules[0]


def _split(values) -> list[str]:
    return [item.strip() for value in values for item in str(value).split(",") if item.strip()]


def _list_fields() -> set[str]:
    """Fields that take several values (argparse ``nargs``: list types and ``_several``)."""
    return {action.dest for action in _parser()._actions if action.nargs in ("+", "*")}


def _parser() -> HfArgumentParser:
    parser = HfArgumentParser(FocusConfig, prog="focusft train")
    parser.error = _flag_error  # a bad flag value: one-paragraph UserError, not usage + exit
    return parser


def split_list_flags(flags: list[str], listed: set[str]) -> list[str]:
    """Every value of a list-valued flag split at its commas (``--x a,b c`` -> ``--x a b c``),
    before argparse reads them, so typed items (enums) are checked one by one."""
    out, inside = [], False
    for token in flags:
        if token.startswith("--"):
            name, eq, value = token[2:].partition("=")
            inside = name in listed
            if inside and eq:
                out += [f"--{name}", *_split([value])]
                continue
            out.append(token)
        elif inside:
            out += _split([token])
        else:
            out.append(token)
    return out


def parse_config(argv: list[str]) -> FocusConfig:
    """Parse ``[--config FILE] [--flag value ...]``; flags override the file."""
    flags = list(argv)
    if "--config" in flags:
        i = flags.index("--config")
        if i + 1 >= len(flags):
            raise UserError("--config needs a file name")
        flags = yaml_to_flags(flags[i + 1]) + flags[:i] + flags[i + 2 :]
    parser = _parser()
    flags = split_list_flags(flags, {o[2:] for a in parser._actions if a.nargs in ("+", "*")
                                     for o in a.option_strings if o.startswith("--")})
    try:
        (config,) = parser.parse_args_into_dataclasses(args=flags)
    except ValueError as err:  # TrainingArguments' own checks (e.g. bf16 without support)
        raise UserError(f"invalid training arguments: {err}") from None
    return config


def _flag_error(message: str):
    raise UserError(f"{message} (flags and --config keys share these names; see `focusft train --help`)")
