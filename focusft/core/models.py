"""Model families: the one place that knows how a transformers decoder is built.

Everything the step needs from a causal LM, read from its structure (the family table below
holds only what the structure cannot tell):

    decoder_layers(model)   the decoder's ModuleList: ``model.layers`` (Llama, Qwen, Gemma, ...),
                            ``gpt_neox.layers``, ``transformer.h`` (GPT-2, Falcon)
    final_norm(model)       ``norm`` | ``final_layernorm`` (Phi) | ``final_layer_norm`` (GPT-NeoX)
                            | ``ln_f`` (GPT-2, Falcon)
    logits_head(model)      h -> logits exactly as ``*ForCausalLM.forward`` computes them from the
                            last decoder layer's output::

                                logits = post(lm_head(pre(norm(h))))
                                post: Gemma2/3/4, VaultGemma, NanoChat  cap * tanh(logits / cap)
                                      Cohere, Cohere2(-MoE)             logits * logit_scale
                                      Granite(-MoE, -SWA, -hybrid)      logits / logits_scaling
                                      HyperCLOVA X                      logits * logits_scaling
                                      Falcon-H1                         logits * lm_head_multiplier
                                      Inkling                           logits[..., :unpadded_vocab]
                                pre:  MiniCPM3                          h / logits_scaling
                                (identity elsewhere; `focusft.core.selfcheck` verifies it at run time)

    default_targets(layer)  the Linears of the layer's MLP block (``mlp`` | ``feed_forward``),
                            fused ones included (Phi-3 / GLM4 ``gate_up_proj``). In a
                            mixture-of-experts layer (the block holds routed experts: 3-D
                            expert parameters or a list of experts) the MLP Linears see
                            flattened tokens, not samples, and fused experts are not Linears:
                            there the targets are the Linears of the layer's attention block
                            (q/k/v/o, or MLA's low-rank projections), which see (sample, position).
                            PEFT tuner layers (a module with ``base_layer``), bitsandbytes
                            Linear4bit / Linear8bitLt and transformers' Conv1D (GPT-2) count as
                            Linears (a PEFT layer is hooked on the wrapper).
    aux_loss(model)         the router load-balancing term the model's own loss adds when its
                            config has ``output_router_logits``:
                            ``router_aux_loss_coef * load_balancing_loss_func(router_logits, E, k,
                            attention_mask)``, the function taken from the model's own module.
    check_supported(model)  a `UserError` for what focusft cannot run exactly (chunked or linear
                            attention, encoder-decoders, ...).

Layout forwarding: StableLM and Nemotron decoder layers do not hand extra keyword arguments
(``layout=``) on to their attention. For these, `prepare` adds two hooks per layer: the layer's
pre-hook stores the layout it was called with on its attention module, the attention module's
pre-hook passes it on. Activation checkpointing re-runs the layer's ``forward`` (not its
hooks) in backward, so the stored layout must be the one of that layer's last graph-building
call: `kept_layouts` restores them after an inner loop that ran the layers under another layout.

The default check of all this is at run time: `focusft.core.selfcheck` compares the paths built
here with the model's own eager forward before the first step.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from typing import Callable

import torch
from accelerate.utils import extract_model_from_parallel
from torch import nn

from focusft.errors import UserError

ATTENTION_NAMES = ("self_attn", "attention", "self_attention", "attn")
MLP_NAMES = ("mlp", "feed_forward", "block_sparse_moe")
NORM_NAMES = ("norm", "final_layernorm", "final_layer_norm", "ln_f")
LAYER_LIST_NAMES = ("layers", "h")
EXACT_LAYER_TYPES = {"full_attention", "sliding_attention"}


def _softcap(model, logits):
    cap = model.config.final_logit_softcapping
    if cap is None:
        return logits
    logits = logits / cap  # the same three operations as the model's forward
    logits = torch.tanh(logits)
    return logits * cap


def _logit_scale(model, logits):
    return logits * model.logit_scale


def _logits_scaling(model, logits):
    return logits / model.config.logits_scaling


def _logits_times_scaling(model, logits):  # MuP (HyperCLOVA X): multiplies where Granite divides
    return logits * model.config.logits_scaling


def _lm_head_multiplier(model, logits):
    return logits * model.model.lm_head_multiplier


def _unpadded_vocab(model, logits):
    n = model.config.unpadded_vocab_size
    return logits[..., :n] if n is not None and n < logits.shape[-1] else logits


def _hidden_over_scaling(model, hidden):  # MiniCPM3: hidden states scaled before the LM head
    return hidden / model.config.logits_scaling


@dataclass(frozen=True)
class Family:
    """What the structure does not tell about a family (keyed by ``config.model_type``)."""

    post_logits: Callable | None = None  # (model, logits) -> logits after lm_head
    pre_head: Callable | None = None  # (model, hidden) -> hidden between the final norm and lm_head
    carries_layout: bool = True  # False: the decoder layer drops layout= (hooks forward it)
    refused: str | None = None  # why focusft cannot run it exactly


FAMILIES: dict[str, Family] = {
    "gemma2": Family(post_logits=_softcap),
    "gemma3_text": Family(post_logits=_softcap),
    "gemma4_text": Family(post_logits=_softcap),
    "vaultgemma": Family(post_logits=_softcap),
    "nanochat": Family(post_logits=_softcap),
    "cohere": Family(post_logits=_logit_scale),
    "cohere2": Family(post_logits=_logit_scale),
    "cohere2_moe": Family(post_logits=_logit_scale),
    "granite": Family(post_logits=_logits_scaling),
    "granite_swa": Family(post_logits=_logits_scaling),
    "granitemoe": Family(post_logits=_logits_scaling),
    "granitemoe_swa": Family(post_logits=_logits_scaling),
    "granitemoeshared": Family(post_logits=_logits_scaling),
    "granitemoehybrid": Family(post_logits=_logits_scaling),
    "hyperclovax": Family(post_logits=_logits_times_scaling),
    "falcon_h1": Family(post_logits=_lm_head_multiplier),
    "inkling_text": Family(post_logits=_unpadded_vocab),
    "minicpm3": Family(pre_head=_hidden_over_scaling),
    "stablelm": Family(carries_layout=False),
    "nemotron": Family(carries_layout=False),
    "falcon": Family(refused="its attention does not go through transformers' AttentionInterface, "
                             "so the block-prefix attention cannot be plugged in"),
}


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model under engine (DDP, DeepSpeed, compile) and PEFT wrappers."""
    model = extract_model_from_parallel(model, keep_torch_compile=False)
    if hasattr(model, "get_base_model"):  # peft.PeftModel
        model = model.get_base_model()
    return model


def family_name(model: nn.Module) -> str:
    return getattr(unwrap(model).config, "model_type", type(unwrap(model)).__name__)


def family(model: nn.Module) -> Family:
    return FAMILIES.get(family_name(model), Family())


def refusal(model: nn.Module) -> str | None:
    """Why focusft cannot train `model` exactly, or None."""
    model = unwrap(model)
    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder models have no single decoder stack for the GLM layout"
    if getattr(config, "attention_chunk_size", None):
        return (f"chunked attention (attention_chunk_size={config.attention_chunk_size}) is not "
                "implemented by the block-prefix attention")
    other = sorted(set(getattr(config, "layer_types", None) or []) - EXACT_LAYER_TYPES)
    if other:
        return (f"layer types {other} (only full and sliding attention layers take the GLM "
                "layout)")
    return family(model).refused


def check_supported(model: nn.Module) -> None:
    """Raise a `UserError` paragraph when focusft cannot run `model` exactly."""
    reason = refusal(model)
    if reason is not None:
        raise UserError(f"{type(unwrap(model)).__name__} (model_type {family_name(model)!r}) is not "
                        f"supported by focusft: {reason}. See README 'Supported models'.")


def decoder(model: nn.Module) -> nn.Module:
    """The decoder stack: ``get_decoder()``, or its one child that holds the layer list
    (Llama4ForCausalLM's ``get_decoder()`` is the model itself; its stack is ``model``)."""
    model = unwrap(model)
    dec = model.get_decoder() if hasattr(model, "get_decoder") else model
    if _layer_list(dec) is None:
        dec = next((c for c in dec.children() if _layer_list(c) is not None), dec)
    return dec


def _layer_list(module: nn.Module) -> nn.ModuleList | None:
    return next((getattr(module, n) for n in LAYER_LIST_NAMES
                 if isinstance(getattr(module, n, None), nn.ModuleList)), None)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder's list of layers."""
    layers = _layer_list(decoder(model))
    if layers is not None:
        return layers
    raise UserError(f"{type(unwrap(model)).__name__}: cannot find the decoder layers (looked for "
                    f"{' / '.join(LAYER_LIST_NAMES)} on its decoder); fast weights need a "
                    "decoder-only LM")


def final_norm(model: nn.Module) -> nn.Module:
    """The norm applied to the last layer's output before the LM head."""
    dec = decoder(model)
    for name in NORM_NAMES:
        norm = getattr(dec, name, None)
        if isinstance(norm, nn.Module):
            return norm
    raise UserError(f"{type(unwrap(model)).__name__}: cannot find the final norm (looked for "
                    f"{' / '.join(NORM_NAMES)} on its decoder)")


def logits_head(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """h (..., hidden) from the last decoder layer -> logits, exactly as the model computes them."""
    inner = unwrap(model)
    norm, pre, out = final_norm(inner), family(inner).pre_head, output_head(inner)

    def head(hidden: torch.Tensor) -> torch.Tensor:
        hidden = norm(hidden)
        return out(hidden if pre is None else pre(inner, hidden))
    return head


def output_head(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """x (..., hidden), the LM head's input -> logits: ``post(lm_head(x))`` (the tail of
    `logits_head`, for hidden states taken at the LM head's input)."""
    inner = unwrap(model)
    lm_head, post = inner.get_output_embeddings(), family(inner).post_logits

    def head(hidden: torch.Tensor) -> torch.Tensor:
        logits = lm_head(hidden)
        return logits if post is None else post(inner, logits)
    return head


def head_vocab(model: nn.Module) -> int:
    """Columns of the LM head's logits (its out_features; the config's vocabulary otherwise)."""
    inner = unwrap(model)
    out = getattr(inner.get_output_embeddings(), "out_features", None)
    return int(out) if out else int(inner.config.get_text_config().vocab_size)


# ------------------------------------------------------------------------- fast-weight targets
def is_linear(module: nn.Module) -> bool:
    """A Linear fast weights can hook: nn.Linear (bitsandbytes' subclass it), transformers' Conv1D
    (GPT-2: y = x W + b, W stored in x out) or a PEFT tuner layer."""
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (nn.Linear, Conv1D)) or \
        isinstance(getattr(module, "base_layer", None), nn.Module)


def features(module: nn.Module) -> tuple[int, int]:
    """(in, out) features of a target (packed 4-bit weights do not show them in their shape)."""
    if hasattr(module, "nf"):  # Conv1D
        return module.weight.shape[0], module.nf
    return module.in_features, module.out_features


def linears(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """(name, module) of the Linears under `module`, in order; a PEFT wrapper counts as one."""
    if is_linear(module):
        return [(prefix, module)]
    found = []
    for name, child in module.named_children():
        found += linears(child, f"{prefix}.{name}" if prefix else name)
    return found


def is_moe(block: nn.Module) -> bool:
    """A block of routed experts: fused 3-D expert weights, or a list of expert modules."""
    return any(p.dim() >= 3 for p in block.parameters()) or \
        any(isinstance(m, nn.ModuleList) for m in block.modules())


def _child(layer: nn.Module, names: tuple[str, ...]) -> tuple[str, nn.Module] | None:
    return next(((n, getattr(layer, n)) for n in names if isinstance(getattr(layer, n, None), nn.Module)),
                None)


def mlp_block(layer: nn.Module) -> nn.Module | None:
    """The MLP (feed-forward) block of a decoder layer, or None when it has none by a known name."""
    found = _child(layer, MLP_NAMES)
    return None if found is None else found[1]


def default_targets(layer: nn.Module, layer_idx: int) -> list[tuple[str, nn.Module]]:
    """(name in layer, module) of the default fast-weight targets (see module docstring)."""
    mlp = _child(layer, MLP_NAMES)
    if mlp is None:
        raise UserError(f"layer {layer_idx} ({type(layer).__name__}) has no MLP block (looked for "
                        f"{' / '.join(MLP_NAMES)}); name the fast-weight Linears with "
                        "--fast_target_modules")
    block = mlp
    if is_moe(mlp[1]):
        block = _child(layer, ATTENTION_NAMES)
        if block is None:
            raise UserError(f"layer {layer_idx}: a mixture-of-experts layer without an attention "
                            "block to host the fast weights")
    found = [(f"{block[0]}.{n}", m) for n, m in linears(block[1])]
    if not found:
        kinds = sorted({type(m).__name__ for m in block[1].modules()
                        if isinstance(getattr(m, "weight", None), torch.Tensor)})
        raise UserError(f"layer {layer_idx}: its {block[0]} block has no Linear modules for fast "
                        f"weights (its projections are {kinds}; fast weights hook nn.Linear, "
                        "Conv1D, PEFT and bitsandbytes Linears only)")
    return found


def named_targets(layer: nn.Module, names: tuple[str, ...], layer_idx: int) -> list[tuple[str, nn.Module]]:
    """The Linears of `layer` whose attribute name is one of `names` (--fast_target_modules).

    Linears inside a mixture-of-experts block are refused: they see flattened tokens, so
    per-sample factors cannot be applied to them.
    """
    moe_blocks = [n for n, m in layer.named_modules() if n and is_moe(m)]
    found = {}
    for full, module in linears(layer):
        leaf = full.rsplit(".", 1)[-1]
        if leaf in names:
            inside = next((b for b in moe_blocks if full.startswith(b + ".")), None)
            if inside is not None:
                raise UserError(f"--fast_target_modules {leaf}: layer {layer_idx}'s {full} sits in the "
                                f"mixture-of-experts block {inside}, whose Linears see flattened "
                                "tokens; per-sample fast weights cannot go there (the default, auto, "
                                "uses the attention projections of such layers)")
            found.setdefault(leaf, (full, module))
    missing = [n for n in names if n not in found]
    if missing:
        raise UserError(f"layer {layer_idx} has no Linear named {missing} for fast weights "
                        f"(--fast_target_modules); its Linear modules are "
                        f"{sorted({f.rsplit('.', 1)[-1] for f, _ in linears(layer)})}")
    return [found[n] for n in names]


def targets(layer: nn.Module, names: tuple[str, ...] | None, layer_idx: int) -> list[nn.Module]:
    """Fast-weight target modules of one layer: structural default (None / ("auto",)) or named."""
    if not names or tuple(names) == ("auto",):
        return [m for _, m in default_targets(layer, layer_idx)]
    return [m for _, m in named_targets(layer, tuple(names), layer_idx)]


def adapted_layer_indices(num_layers: int, fraction: float) -> list[int]:
    """Top `fraction` of the layers: int(L * (1 - fraction)) .. L-1 (the reference's rule).

    >>> adapted_layer_indices(28, 0.35)[:3], len(adapted_layer_indices(28, 0.35))
    ([18, 19, 20], 10)
    """
    first = min(int(num_layers * (1.0 - fraction)), num_layers - 1)
    return list(range(first, num_layers))


def describe_targets(model: nn.Module, layer_fraction: float = 0.35) -> str:
    """The default targets of the adapted layers, e.g. ``mlp.{gate_proj,up_proj,down_proj}``."""
    layers = decoder_layers(model)
    seen = []
    for idx in adapted_layer_indices(len(layers), layer_fraction):
        names = [n for n, _ in default_targets(layers[idx], idx)]
        block = names[0].split(".", 1)[0]
        text = f"{block}.{{{','.join(n.split('.', 1)[1] for n in names)}}}"
        if text not in seen:
            seen.append(text)
    return " / ".join(seen)


# ------------------------------------------------------------------------- auxiliary losses
@dataclass
class AuxLoss:
    """coef * load_balancing_loss_func(router logits, E, k, mask), the model's own function."""

    fn: Callable
    coef: float
    num_experts: int
    top_k: int

    def batch(self, router_logits, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """The term of a whole batch, as the model's forward adds it (padding masked out)."""
        if not router_logits:
            return torch.zeros(())
        return self.coef * self.fn(tuple(router_logits), self.num_experts, self.top_k, attention_mask)

    def per_sample(self, router_logits, token_samples: torch.Tensor, n_samples: int) -> torch.Tensor:
        """(N,) the term of each sample alone (its own real tokens). token_samples: (B, S), -1 = pad."""
        flat = token_samples.flatten()
        terms = []
        for n in range(n_samples):
            rows = (flat == n).nonzero(as_tuple=True)[0]
            if not router_logits or len(rows) == 0:
                terms.append(torch.zeros((), device=flat.device))
                continue
            picked = tuple(logits[rows.to(logits.device)] for logits in router_logits)
            terms.append(self.coef * self.fn(picked, self.num_experts, self.top_k, None))
        return torch.stack(terms)


def aux_loss(model: nn.Module) -> AuxLoss | None:
    """The auxiliary loss the model's own forward adds to its loss, or None."""
    model = unwrap(model)
    if not getattr(model.config, "output_router_logits", False):
        return None
    fn = getattr(sys.modules[type(model).__module__], "load_balancing_loss_func", None)
    coef = getattr(model, "router_aux_loss_coef", None)
    if fn is None or coef is None or _collector() is None:
        # the model's forward adds no such term (e.g. DeepSeek-V3), or its router logits cannot
        # be recorded here (then the self-check sees the model's own loss differ)
        return None
    return AuxLoss(fn, float(coef), int(model.num_experts), int(model.num_experts_per_tok))


def _collector():
    """transformers' context variable behind its output recorders (None where it has none)."""
    try:
        from transformers.utils import output_capturing
    except ImportError:
        return None
    return getattr(output_capturing, "_active_collector", None)


@contextlib.contextmanager
def own_outputs(router_logits: bool):
    """Layer calls inside the block record their outputs here, not in an enclosing forward's.

    Yields the list the model's own recorders (transformers' ``OutputRecorder`` hooks) append
    router logits to when `router_logits`; otherwise nothing is recorded inside the block.
    """
    collector = _collector()
    store = {"router_logits": []} if router_logits else {}
    if collector is None:
        yield store.get("router_logits", [])
        return
    token = collector.set(store)
    try:
        yield store.get("router_logits", [])
    finally:
        collector.reset(token)


def recorded_router_logits() -> list[torch.Tensor]:
    """The router logits the running forward has recorded so far (detached)."""
    collector = _collector()
    store = (collector.get() if collector is not None else None) or {}
    return [t.detach() for t in store.get("router_logits", [])]


# ------------------------------------------------------------------------- layout forwarding
_STASH = "_focusft_layout"


def _stash_layout(attn):
    def pre_hook(layer, args, kwargs):
        setattr(attn, _STASH, kwargs.get("layout"))
    return pre_hook


def _pass_layout(attn, args, kwargs):
    layout = getattr(attn, _STASH, None)
    if layout is not None and kwargs.get("layout") is None:
        return args, {**kwargs, "layout": layout}
    return None


def prepare(model: nn.Module) -> list:
    """Make `layout=` reach every attention call of `model` (idempotent); returns new hook handles."""
    inner = unwrap(model)
    if family(inner).carries_layout or getattr(inner, "_focusft_prepared", False):
        return []
    handles = []
    for idx, layer in enumerate(decoder_layers(inner)):
        attn = _child(layer, ATTENTION_NAMES)
        if attn is None:
            raise UserError(f"layer {idx} of {type(inner).__name__}: no attention block to pass the "
                            "layout to")
        handles.append(layer.register_forward_pre_hook(_stash_layout(attn[1]), with_kwargs=True))
        handles.append(attn[1].register_forward_pre_hook(_pass_layout, with_kwargs=True))
    inner._focusft_prepared = True
    return handles


@contextlib.contextmanager
def kept_layouts(model: nn.Module):
    """Stored layouts are put back on exit (layer calls inside may run under another layout)."""
    mods = [m for layer in decoder_layers(model) for m in layer.children() if hasattr(m, _STASH)]
    saved = [getattr(m, _STASH) for m in mods]
    try:
        yield
    finally:
        for m, layout in zip(mods, saved):
            setattr(m, _STASH, layout)


# ------------------------------------------------------------------------- the eager reference
def eager_mask(model: nn.Module, allowed: torch.Tensor, dtype=torch.float32):
    """The additive mask the model's eager attention takes for a (B, S, S) boolean `allowed`:
    one (B, 1, S, S) tensor, or one per layer type when the model mixes full and sliding layers
    (a sliding layer additionally hides keys k <= q - window, as transformers' own mask does)."""
    config = unwrap(model).config
    types = set(getattr(config, "layer_types", None) or [])
    window = getattr(config, "sliding_window", None)

    def additive(ok, win):
        if win:
            q = torch.arange(ok.shape[-2], device=ok.device)[:, None]
            ok = ok & (torch.arange(ok.shape[-1], device=ok.device)[None] > q - win)
        return torch.where(ok, 0.0, torch.finfo(dtype).min).to(dtype)[:, None]

    if "sliding_attention" in types:
        return {"full_attention": additive(allowed, None),
                "sliding_attention": additive(allowed, window)}
    return additive(allowed, window if types <= {"sliding_attention"} else None)
