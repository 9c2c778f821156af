"""Tiny configurations of transformers' own decoder architectures (4 layers, hidden 64, fp32).

`build(name)` returns a randomly initialised model; `SPECS` lists every architecture the matrix
covers, with the config overrides that make it tiny. Variants: ``scaled`` multiplies the
embedding / head weights so soft-caps and logit scales actually bind.
"""

from __future__ import annotations

import torch
import transformers

VOCAB = 96
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
              pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
MOE = dict(num_local_experts=4, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=48,
           output_router_logits=True, router_aux_loss_coef=0.05)
FULL = dict(layer_types=["full_attention"] * 4)
SLIDING = dict(layer_types=["sliding_attention", "full_attention"] * 2)

# name -> (config class name, overrides)
SPECS: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", {}),
    "mistral": ("MistralConfig", dict(sliding_window=None)),
    "mistral-sliding-long": ("MistralConfig", dict(sliding_window=4096)),
    "mistral-sliding": ("MistralConfig", dict(sliding_window=8)),
    "mixtral": ("MixtralConfig", dict(MOE, sliding_window=None)),
    "qwen2": ("Qwen2Config", dict(FULL)),
    "qwen2-moe": ("Qwen2MoeConfig", dict(MOE, shared_expert_intermediate_size=48, **FULL)),
    "qwen3": ("Qwen3Config", dict(FULL)),
    "qwen3-moe": ("Qwen3MoeConfig", dict(MOE)),
    "gemma": ("GemmaConfig", {}),
    "gemma2": ("Gemma2Config", dict(FULL, attn_logit_softcapping=None, final_logit_softcapping=5.0)),
    "gemma2-attn-softcap": ("Gemma2Config", dict(FULL, attn_logit_softcapping=2.0,
                                                 final_logit_softcapping=5.0)),
    "gemma2-sliding": ("Gemma2Config", dict(SLIDING, sliding_window=8, attn_logit_softcapping=None)),
    "gemma3-text": ("Gemma3TextConfig", dict(FULL, final_logit_softcapping=5.0)),
    "phi3": ("Phi3Config", dict(sliding_window=None)),
    "phi": ("PhiConfig", dict(partial_rotary_factor=0.5)),
    "olmo2": ("Olmo2Config", {}),
    "olmoe": ("OlmoeConfig", dict(MOE)),
    "smollm3": ("SmolLM3Config", dict(FULL, no_rope_layers=[1, 1, 1, 0])),
    "granite": ("GraniteConfig", dict(logits_scaling=0.25, residual_multiplier=0.5,
                                      embedding_multiplier=2.0, attention_multiplier=0.2)),
    "granitemoe": ("GraniteMoeConfig", dict(MOE, logits_scaling=0.25)),
    "cohere": ("CohereConfig", dict(logit_scale=4.0)),
    "cohere2": ("Cohere2Config", dict(FULL, logit_scale=4.0, sliding_window=4096)),
    "cohere2-sliding": ("Cohere2Config", dict(SLIDING, logit_scale=4.0, sliding_window=8)),
    "stablelm": ("StableLmConfig", {}),
    "nemotron": ("NemotronConfig", {}),
    "gpt-neox": ("GPTNeoXConfig", {}),
    "gpt-oss": ("GptOssConfig", dict(MOE, **FULL, sliding_window=4096)),
    "deepseek-v3": ("DeepseekV3Config", dict(MOE, n_routed_experts=4, first_k_dense_replace=1,
                                             n_shared_experts=1, q_lora_rank=32, kv_lora_rank=16,
                                             qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16,
                                             n_group=1, topk_group=1, head_dim=8,
                                             num_key_value_heads=4)),
    "starcoder2": ("Starcoder2Config", dict(sliding_window=None)),
    "glm4": ("Glm4Config", {}),
    "glm": ("GlmConfig", {}),
    "ernie4.5": ("Ernie4_5Config", {}),
    "olmo3": ("Olmo3Config", dict(FULL, sliding_window=4096)),
    "olmo": ("OlmoConfig", {}),
    "exaone4": ("Exaone4Config", dict(FULL, sliding_window=4096)),
    "seed-oss": ("SeedOssConfig", {}),
    "hunyuan-dense": ("HunYuanDenseV1Config", {}),
    "vaultgemma": ("VaultGemmaConfig", dict(FULL, final_logit_softcapping=5.0, attn_logit_softcapping=None)),
    "nanochat": ("NanoChatConfig", dict(final_logit_softcapping=5.0)),
    "hyperclovax": ("HyperCLOVAXConfig", dict(logits_scaling=4.0)),
    "cohere2-moe": ("Cohere2MoeConfig", dict(MOE, **FULL, logit_scale=4.0, sliding_window=4096)),
    "minicpm3": ("MiniCPM3Config", dict(dim_model_base=16, q_lora_rank=32, kv_lora_rank=16,
                                        qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16,
                                        num_key_value_heads=4, head_dim=8)),
    "gpt2": ("GPT2Config", dict(n_embd=64, n_layer=4, n_head=4, n_inner=96, n_positions=256)),
    "falcon": ("FalconConfig", dict(new_decoder_architecture=True, num_kv_heads=2, head_dim=None)),
    "qwen3-next": ("Qwen3NextConfig", dict(MOE, shared_expert_intermediate_size=48, linear_num_value_heads=4,
                                           linear_num_key_heads=2, linear_key_head_dim=16,
                                           linear_value_head_dim=16,
                                           layer_types=["linear_attention", "full_attention"] * 2)),
    "llama4-text-full": ("Llama4TextConfig", dict(MOE, **FULL, attention_chunk_size=None,
                                                  intermediate_size_mlp=96)),
    "llama4-text": ("Llama4TextConfig", dict(MOE, attention_chunk_size=8, intermediate_size_mlp=96,
                                             layer_types=["chunked_attention", "full_attention"] * 2)),
}


ALWAYS_SCALED = {"gemma2-attn-softcap"}  # the attention soft-cap binds only with larger scores


def make_config(name: str, **extra):
    cls_name, overrides = SPECS[name]
    cls = getattr(transformers, cls_name)
    kwargs = {**COMMON, **overrides, **extra}
    kwargs = {k: v for k, v in kwargs.items() if v is not None or k != "head_dim"}
    if cls_name == "GPT2Config":
        kwargs["vocab_size"] = kwargs.get("vocab_size")
    return cls(**kwargs)


def build(name: str, seed: int = 0, scaled: bool = False, **extra):
    """A tiny random model of architecture `name`; `extra` overrides config fields (e.g. vocab)."""
    config = make_config(name, **extra)
    torch.manual_seed(seed)
    try:
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    except ValueError:  # no SDPA support declared (Gemma2, GPT-OSS): eager
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    model = model.float()
    if scaled or name in ALWAYS_SCALED:  # larger logits and scores: soft-caps and scales bind
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(8.0)
            for mod_name, mod in model.named_modules():
                if mod_name.endswith(("q_proj", "k_proj")):
                    mod.weight.mul_(4.0)
    return model.eval()


# Cases that need attention features the block-prefix attention does not have yet.
PENDING: dict[str, str] = {}
# Refused with a UserError whose message matches the pattern.
REFUSED = {
    "llama4-text": "chunked attention",
    "falcon": "AttentionInterface",
    "qwen3-next": "linear_attention",
}
EXACT = [n for n in SPECS if n not in REFUSED]


def cases(names):
    """pytest params, pending ones xfail(strict=True) with the missing feature as reason."""
    import pytest

    return [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=f"needs {PENDING[n]}"))
            if n in PENDING else n for n in names]


def supported_table() -> str:
    """README's 'Supported models' table: one row per tested configuration of the matrix."""
    from focusft.core import models

    lines = ["| family (`model_type`) | tested configuration | focusft | default fast-weight targets |",
             "|---|---|---|---|"]
    for name, (cls, overrides) in SPECS.items():
        model = build(name)
        shown = {k: v for k, v in overrides.items() if k in NOTED}
        config = ", ".join(f"{k}={v}" for k, v in shown.items()) or "defaults"
        if name in REFUSED:
            try:
                models.check_supported(model)
                where = models.describe_targets(model)
            except Exception as err:  # the refusal itself
                where = "-"
                status = f"refused: {_reason(str(err))}"
        else:
            status = f"pending: {PENDING[name]}" if name in PENDING else "exact"
            where = models.describe_targets(model)
        where = where.replace("|", "\\|")
        lines.append(f"| {model.config.model_type} | {config} | {status} | `{where}` |")
    return "\n".join(lines) + "\n"


def _reason(message: str) -> str:
    """The reason part of a refusal: '<Model> ... is not supported by focusft: <reason>. See ...'
    or 'layer N: <reason>'."""
    marker = " is not supported by focusft: "
    if marker in message:
        return message.split(marker, 1)[1].rsplit(". See README", 1)[0]
    return message.split(": ", 1)[1]


NOTED = ("sliding_window", "dim_model_base", "attn_logit_softcapping", "final_logit_softcapping", "logit_scale",
         "logits_scaling", "num_local_experts", "n_routed_experts", "attention_chunk_size",
         "first_k_dense_replace", "n_shared_experts", "shared_expert_intermediate_size")

if __name__ == "__main__":
    print(supported_table(), end="")
