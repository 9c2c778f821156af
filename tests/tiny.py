"""Tiny models and batches shared by the core tests (float32, CPU, seconds to build)."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

VOCAB = 64


def tiny_qwen2(seed: int = 0, layers: int = 4) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False)
    return Qwen2ForCausalLM(cfg).float()


def tiny_llama(seed: int = 0, layers: int = 3) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256)
    return LlamaForCausalLM(cfg).float()


def make_batch(layouts: list[list[tuple[int, int]]], seed: int = 0) -> dict:
    """A collated batch from per-row [(n_tokens, is_loss), ...] runs; right padding to the longest."""
    g = torch.Generator().manual_seed(seed)
    lengths = [sum(n for n, _ in runs) for runs in layouts]
    S = max(lengths)
    B = len(layouts)
    input_ids = torch.randint(1, VOCAB, (B, S), generator=g)
    loss_mask = torch.zeros(B, S, dtype=torch.bool)
    for b, runs in enumerate(layouts):
        pos = 0
        for n, is_loss in runs:
            loss_mask[b, pos:pos + n] = bool(is_loss)
            pos += n
        input_ids[b, lengths[b]:] = 0
    attention_mask = (torch.arange(S)[None] < torch.tensor(lengths)[:, None]).long()
    labels = torch.full((B, S), -100)
    labels[:, :-1] = torch.where(loss_mask[:, 1:], input_ids[:, 1:], -100)
    return {"input_ids": input_ids, "loss_mask": loss_mask, "attention_mask": attention_mask,
            "labels": labels, "sample_ids": torch.arange(B)}
