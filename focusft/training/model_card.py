"""The model card (README.md) written next to every saved model, ready for the Hub.

It states the method (FocuSFT or SFT, the mask, the inner-loop knobs), the base model, the data,
the configuration that matters (the full one is ``focusft.yaml`` beside it), the metrics of the
run, and how to load the result (a plain causal LM, or a PEFT adapter on its base). The YAML
front matter is the Hub's model-card metadata.
"""

from __future__ import annotations

import json

import yaml

from focusft.training.config import FocusConfig

KNOBS = ("method", "attention", "inner_steps", "inner_lr", "inner_clip", "inner_objective",
         "fast_rank", "fast_alpha", "fast_layer_fraction", "fast_target_modules",
         "learning_rate", "lr_scheduler_type", "num_train_epochs", "max_steps",
         "per_device_train_batch_size", "gradient_accumulation_steps", "max_length", "seed")
PEFT_KNOBS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "load_in_4bit",
              "load_in_8bit")


def model_card(cfg: FocusConfig, metrics: dict, adapter: bool) -> str:
    base = cfg.model or "the embedded tiny default (focusft.sources.default, built in memory)"
    meta = {"library_name": "peft" if adapter else "transformers",
            "tags": ["focusft", "sft", "long-context"] + (["lora"] if adapter else []),
            "pipeline_tag": "text-generation"}
    if cfg.model:
        meta["base_model"] = cfg.model
    knobs = KNOBS + (PEFT_KNOBS if cfg.use_peft or adapter else ())
    rows = "\n".join(f"| `{k}` | `{getattr(cfg, k)}` |" for k in knobs)
    shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
    metric_rows = "\n".join(f"| `{k}` | {v} |" for k, v in shown.items()) or "| (none) | |"
    return f"""---
{yaml.safe_dump(meta, sort_keys=False).strip()}
---

# {_title(cfg)}

Fine-tuned from **{base}** with **{_method(cfg)}** using
[focusft](https://arxiv.org/abs/2605.09932) (FocuSFT: bilevel, dilution-aware long-context SFT).
{_weights(cfg)}
{_method_text(cfg)}
{_rope(cfg, adapter)}
## Data

Training data: `{cfg.data or "the embedded default's generated rows"}`.
Evaluation data: `{cfg.eval_data or "none"}`.

## Configuration

The full resolved configuration is `focusft.yaml` (reusable as `focusft train --config focusft.yaml`).

| option | value |
|---|---|
{rows}

## Metrics

| metric | value |
|---|---|
{metric_rows}

## How to load

{_how_to_load(adapter)}
"""


def _weights(cfg: FocusConfig) -> str:
    """A line on the base's weights when it records one (a quantization dequantized)."""
    from focusft.sources.pretrained import provenance

    note = provenance(cfg.model)
    return f"\nBase weights: {note}.\n" if note else ""


def _rope(cfg: FocusConfig, adapter: bool) -> str:
    """A paragraph on --rope_scaling, when the run used it."""
    if not cfg.rope_scaling:
        return ""
    from focusft.sources.rope_scaling import describe

    where = ("`focusft_rope_scaling.json` (load the base with these `rope_parameters` before the "
             "adapter; `focusft eval` does)") if adapter else \
        "`config.json` (`rope_parameters`), so transformers applies it when loading"
    return (f"\nRoPE scaling: **{describe(cfg.rope_scaling)}** (`--rope_scaling "
            f"'{json.dumps(cfg.rope_scaling)}'`), trained with it and recorded in {where}.\n")


def _title(cfg: FocusConfig) -> str:
    return f"{(cfg.model or 'focusft-tiny').rstrip('/').split('/')[-1]} ({cfg.method})"


def _method(cfg: FocusConfig) -> str:
    if cfg.method == "sft":
        return f"plain SFT under the {cfg.attention} mask"
    return f"FocuSFT (K = {cfg.inner_steps} inner steps, {cfg.attention} mask)"


def _method_text(cfg: FocusConfig) -> str:
    if cfg.method == "sft":
        return ("Next-token cross-entropy on assistant tokens; "
                + ("context turns attend bidirectionally, responses causally." if cfg.attention == "glm"
                   else "causal attention."))
    return (f"Each step first adapts transient per-sample LoRA fast weights (rank {cfg.fast_rank}) on "
            f"the top {cfg.fast_layer_fraction:.0%} of layers for {cfg.inner_steps} SGD steps "
            f"(lr {cfg.inner_lr}, objective `{cfg.inner_objective}`), then takes the SFT update "
            "with them active. The fast weights are never saved: this checkpoint is the base "
            "model the outer loop trained, used like any other.")


def _how_to_load(adapter: bool) -> str:
    if adapter:
        return ("A PEFT LoRA adapter on the base model above:\n\n```python\n"
                "from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
                'model = AutoPeftModelForCausalLM.from_pretrained("path/or/repo")\n'
                'tokenizer = AutoTokenizer.from_pretrained("path/or/repo")\n```\n')
    return ("A plain Hugging Face causal LM (safetensors; focusft is not needed to use it):\n\n"
            "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            'model = AutoModelForCausalLM.from_pretrained("path/or/repo")\n'
            'tokenizer = AutoTokenizer.from_pretrained("path/or/repo")\n```\n')
