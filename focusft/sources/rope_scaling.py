"""RoPE scaling (``--rope_scaling``): a model's rotary position embedding stretched past its window.

The value is a JSON object (``{"rope_type": "yarn", "factor": 4.0}``) or ``key=value`` pairs
separated by commas (``type=yarn,factor=4``; each value read as JSON when it parses, so numbers
are numbers; lists, as longrope's factors, need the JSON form). ``type`` is the older spelling
of ``rope_type``. `parse` checks what needs no model: the keys are transformers' own
(``RopeParameters``), the type is one transformers implements (``ROPE_INIT_FUNCTIONS``:
linear, dynamic, yarn, longrope, llama3, proportional) and a ``factor`` is a number > 1.

`scaled` applies it to a model's config before the model is built, as transformers 5 reads it:
``config.rope_parameters`` (the old ``rope_scaling`` is its alias). The scaling keys of the
config's entry are replaced by the user's, the rest (``rope_theta``, ``partial_rotary_factor``,
model-specific keys) kept; in a config with one entry per layer type (Gemma 3, OLMo 3) the
scaling goes to the full-attention entry, as transformers puts a legacy ``rope_scaling`` there
(sliding-window layers never see far positions). transformers' own ``standardize_rope_params``
then fills the defaults (yarn, llama3 and longrope: ``original_max_position_embeddings`` = the
config's ``max_position_embeddings``, taken as the native window) and its ``validate_rope``
checks the required keys of the type. ``max_position_embeddings`` is left as it is
(transformers' YaRN reads the ratio from ``factor``; dynamic NTK reads the native window from
it). A family without RoPE (GPT-2) is refused. `config_of` (``gguf_file.read_config`` for a
GGUF file) reads a model's config without loading any weights, so all of this runs before
weights load or anything is written; `check_applied` confirms the built model's rotary modules
took the type.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

from focusft.errors import UserError

FLAG = "--rope_scaling"
# The keys of a config's RoPE entry that describe a scaling: replaced by the user's, never merged.
SCALING_KEYS = {"rope_type", "type", "factor", "original_max_position_embeddings",
                "attention_factor", "beta_fast", "beta_slow", "short_factor", "long_factor",
                "low_freq_factor", "high_freq_factor", "mscale", "mscale_all_dim", "truncate"}


def known_types() -> list[str]:
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    return list(ROPE_INIT_FUNCTIONS)


def known_keys() -> set[str]:
    from transformers.modeling_rope_utils import RopeParameters

    return set(RopeParameters.__annotations__) | {"type"}


def parse(value, flag: str = FLAG) -> dict | None:
    """The scaling as a dict with ``rope_type`` (None for an unset value); see the docstring."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    shown = value if isinstance(value, str) else json.dumps(value)
    if isinstance(value, str):
        value = _read(value.strip(), flag)
    if not isinstance(value, dict):
        raise UserError(f"{flag} {shown}: expected a JSON object or key=value pairs "
                        "(e.g. '{\"rope_type\": \"yarn\", \"factor\": 4.0}' or type=yarn,factor=4)")
    scaling = dict(value)
    if "type" in scaling:
        kind = scaling.pop("type")
        if scaling.setdefault("rope_type", kind) != kind:
            raise UserError(f"{flag} {shown}: 'type' and 'rope_type' disagree; give one of them")
        scaling = {"rope_type": kind, **scaling}
    unknown = sorted(set(scaling) - known_keys())
    if unknown:
        raise UserError(f"{flag} {shown}: unknown key(s) {unknown}; transformers' RoPE parameters "
                        f"are {sorted(known_keys() - {'type'})}")
    kind = scaling.get("rope_type")
    if kind not in known_types():
        what = "no rope_type (or type)" if kind is None else f"unknown type {kind!r}"
        raise UserError(f"{flag} {shown}: {what}; the installed transformers scales RoPE with "
                        f"{', '.join(known_types())}")
    if "factor" in scaling:
        factor = scaling["factor"]
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or \
                not math.isfinite(factor) or factor <= 1:
            raise UserError(f"{flag} {shown}: factor must be a number > 1 (the new window over the "
                            f"model's native one), got {factor!r}")
        scaling["factor"] = float(factor)
    return scaling


def _read(text: str, flag: str):
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f"{flag} {text}: not valid JSON ({err.msg} at column {err.colno})") from None
    pairs = {}
    for item in (part.strip() for part in text.split(",")):
        key, eq, raw = item.partition("=")
        if not eq or not key.strip() or not raw.strip():
            raise UserError(f"{flag} {text}: {item!r} is not key=value; write e.g. "
                            "type=yarn,factor=4 or a JSON object")
        try:
            pairs[key.strip()] = json.loads(raw.strip())
        except json.JSONDecodeError:
            pairs[key.strip()] = raw.strip()
    return pairs


def describe(scaling: dict) -> str:
    """One line for the model card and logs: ``yarn, factor 4.0 (beta_fast=32)``."""
    rest = ", ".join(f"{k}={v}" for k, v in scaling.items() if k not in ("rope_type", "factor"))
    factor = f", factor {scaling['factor']}" if "factor" in scaling else ""
    return f"{scaling['rope_type']}{factor}" + (f" ({rest})" if rest else "")


def scaled(config, scaling: dict, flag: str = FLAG):
    """A copy of the model config `config` with `scaling` in its RoPE parameters, validated."""
    params = getattr(config, "rope_parameters", None)
    if not params:
        raise UserError(f"{flag} {json.dumps(scaling)}: the model ({config.model_type}) has no "
                        "rotary position embedding (RoPE) to scale: its config has no "
                        "rope_parameters; drop --rope_scaling for this model")
    new = copy.deepcopy(config)
    nested = new.nested_rope_parameter_keys(params)
    if nested:  # per layer type: the full-attention layers, as transformers reads rope_scaling
        targets = ["full_attention"] if params.get("full_attention") else nested
        new.rope_parameters = {k: _replaced(params[k], scaling) if k in targets else params[k]
                               for k in nested}
    else:
        new.rope_parameters = _replaced(params, scaling)
    if "original_max_position_embeddings" in scaling and \
            getattr(new, "original_max_position_embeddings", None) is not None:
        new.original_max_position_embeddings = scaling["original_max_position_embeddings"]  # Phi-3
    try:
        new.standardize_rope_params()
        new.validate_rope()
    except (KeyError, ValueError, TypeError) as err:
        message = err.args[0] if err.args else type(err).__name__
        raise UserError(f"{flag} {json.dumps(scaling)}: transformers refuses it for this model "
                        f"({config.model_type}): {message}") from None
    return new


def _replaced(entry: dict, scaling: dict) -> dict:
    return {**{k: v for k, v in entry.items() if k not in SCALING_KEYS}, **copy.deepcopy(scaling)}


def config_of(path: str, flag: str = "--model", trust_remote_code: bool = False):
    """The config of the model `path` names (a directory or hub name; a GGUF file's:
    ``gguf_file.read_config``), read without loading weights."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as err:
        local = "" if Path(path).expanduser().exists() else "no such local directory, and "
        raise UserError(f"{flag} {path}: cannot read its config.json: {local}"
                        f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None


def rotary_types(model) -> set[str]:
    """The RoPE types of the model's rotary modules (modules holding an ``inv_freq`` buffer)."""
    found = set()
    for module in model.modules():
        kind = getattr(module, "rope_type", None)
        if kind is None or not hasattr(module, "inv_freq"):
            continue
        found |= set(kind.values()) if isinstance(kind, dict) else {kind}
    return found


def check_applied(model, scaling: dict, flag: str = FLAG) -> None:
    """Refuse a model whose rotary modules did not take the scaling's type (code that does not
    read ``rope_parameters``)."""
    found = rotary_types(model)
    if scaling["rope_type"] not in found:
        raise UserError(f"{flag} {json.dumps(scaling)}: the model's config carries it, but none of "
                        f"its rotary embeddings uses it (found: {sorted(found) or 'no rotary module'}); "
                        "this architecture's code does not read rope_parameters, drop the flag")
