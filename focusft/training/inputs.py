"""What `FocusTrainer` accepts, turned into what the step needs (TRL's SFTTrainer conventions).

* ``args``: a `FocusConfig`, a plain ``transformers.TrainingArguments`` or TRL ``SFTConfig``
  (every value under a name `FocusConfig` shares is kept, the method's knobs at their
  defaults) or None (all defaults).
* ``model``: a `PreTrainedModel` (or PEFT model), a directory / hub name (loaded like
  ``--model``, an adapter directory included), or None for the embedded tiny default.
* ``train_dataset`` / ``eval_dataset``: a ``datasets.Dataset`` or a list of rows in chat form
  (``messages``, optional ``tools``; or ``prompt``/``completion``), tokenized here with the
  chat template of ``processing_class`` and assistant-only loss masks (`focusft.data.pipeline`); or a
  dataset that is already tokenized (``input_ids`` + ``loss_mask`` columns). A dict of eval
  datasets is handled entry by entry.
"""

from __future__ import annotations

import logging
from dataclasses import fields

import datasets
from transformers import TrainingArguments

from focusft.training.config import FocusConfig
from focusft.errors import UserError

logger = logging.getLogger("focusft")

# Columns the collator reads; kept when the Trainer removes "unused" columns.
COLUMNS = ["input_ids", "loss_mask", "sample_id", "length"]


def as_focus_config(args) -> FocusConfig:
    if args is None:
        return FocusConfig()
    if isinstance(args, FocusConfig):
        return args
    if isinstance(args, TrainingArguments):  # also TRL's SFTConfig: its max_length, packing, ...
        values = {f.name: getattr(args, f.name) for f in fields(FocusConfig)
                  if f.init and hasattr(args, f.name)}
        return FocusConfig(**values)
    raise UserError(f"args must be a FocusConfig or transformers.TrainingArguments, got "
                    f"{type(args).__name__}")


def resolve_model(model, tokenizer, cfg: FocusConfig):
    """(model, tokenizer): a name is loaded with its tokenizer, None builds the embedded default."""
    from focusft.training.loading import load_model_and_tokenizer

    if model is None or isinstance(model, str):
        if isinstance(model, str):
            cfg.model = model
        loaded, loaded_tokenizer = load_model_and_tokenizer(cfg)
        return loaded, tokenizer if tokenizer is not None else loaded_tokenizer
    if tokenizer is None:
        raise UserError("processing_class: pass the tokenizer of the model (it renders the chat "
                        "template and pads); only a model given by name brings its own")
    if cfg.rope_scaling:
        _check_built_scaling(model, cfg.rope_scaling)
    return model, tokenizer


def _check_built_scaling(model, scaling: dict) -> None:
    """A model passed built must already carry rope_scaling: focusft applies it only to the
    config of a model it builds itself."""
    from focusft.sources import rope_scaling

    config = getattr(model, "config", None)
    if config is None or rope_scaling.scaled(config, scaling).rope_parameters != config.rope_parameters:
        raise UserError(f"rope_scaling {scaling}: the model was passed already built, so its "
                        "rotary embedding cannot be changed; pass the model by name (it is then "
                        "built under the scaling) or build it from a config with these "
                        "rope_parameters")


def prepare_dataset(data, tokenizer, cfg: FocusConfig, name: str):
    """A tokenized ``datasets.Dataset`` with the collator's columns (see module docstring)."""
    if data is None:
        return None
    if isinstance(data, dict) and not isinstance(data, datasets.Dataset):
        return {k: prepare_dataset(v, tokenizer, cfg, f"{name}[{k!r}]") for k, v in data.items()}
    if isinstance(data, list) and data and isinstance(data[0], dict) and "input_ids" in data[0]:
        data = datasets.Dataset.from_list(data)
    if not isinstance(data, (datasets.Dataset, list)):
        raise UserError(f"{name}: expected a datasets.Dataset or a list of rows, got {type(data).__name__}")
    if isinstance(data, datasets.Dataset) and {"input_ids", "loss_mask"} <= set(data.column_names):
        if "sample_id" not in data.column_names:
            data = data.add_column("sample_id", list(range(len(data))))
        return data
    from focusft.data.pipeline import tokenize_rows

    # A list goes to tokenize_rows as it is: rows may differ in shape (tools, tool calls).
    tokenized, report = tokenize_rows(data, tokenizer, cfg.max_length, cfg.truncation, name,
                                      empty_think_loss=cfg.empty_think_loss,
                                      num_proc=cfg.dataset_num_proc)
    logger.warning("focusft data %s: %s", name, report.summary())
    return tokenized
