"""A tiny Llama written as a GGUF file (the layout llama.cpp writes), for the GGUF tests.

`write_tiny_gguf` stores a seeded tiny Llama's weights under GGUF tensor names (one tensor
quantized to Q8_0, the rest float32) with the ChatML test tokenizer as GGUF metadata (tokens,
merges, special ids, chat template), so transformers' GGUF loader reads back a model and a
tokenizer, as it reads a real file.
"""

import json

import numpy as np

LAYERS, HIDDEN, FFN, HEADS, KV_HEADS = 2, 32, 64, 4, 2


def _tensors(vocab: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def weight(*shape):
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    head = HIDDEN // HEADS
    out = {"token_embd.weight": weight(vocab, HIDDEN),
           "output_norm.weight": np.ones(HIDDEN, np.float32)}
    for i in range(LAYERS):
        out.update({f"blk.{i}.attn_norm.weight": np.ones(HIDDEN, np.float32),
                    f"blk.{i}.ffn_norm.weight": np.ones(HIDDEN, np.float32),
                    f"blk.{i}.attn_q.weight": weight(HIDDEN, HIDDEN),
                    f"blk.{i}.attn_k.weight": weight(KV_HEADS * head, HIDDEN),
                    f"blk.{i}.attn_v.weight": weight(KV_HEADS * head, HIDDEN),
                    f"blk.{i}.attn_output.weight": weight(HIDDEN, HIDDEN),
                    f"blk.{i}.ffn_gate.weight": weight(FFN, HIDDEN),
                    f"blk.{i}.ffn_up.weight": weight(FFN, HIDDEN),
                    f"blk.{i}.ffn_down.weight": weight(HIDDEN, FFN)})
    return out


def _add_tokenizer(writer, tokenizer) -> None:
    from gguf import TokenType

    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = tokenizer.get_vocab()
    tokens = [tok for tok, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = set(tokenizer.all_special_tokens)
    merges = [m if isinstance(m, str) else " ".join(m) for m in backend["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([TokenType.CONTROL if t in special else TokenType.NORMAL for t in tokens])
    writer.add_token_merges(merges)
    writer.add_eos_token_id(vocab[tokenizer.eos_token])
    writer.add_pad_token_id(vocab[tokenizer.pad_token])
    writer.add_add_bos_token(False)
    writer.add_chat_template(tokenizer.chat_template)


def write_tiny_gguf(path, tokenizer=None, seed: int = 0, architecture: str = "llama",
                    int8_tensor: bool = False):
    """Write the tiny GGUF to ``path``; returns the path. ``architecture`` / ``int8_tensor``:
    make a file transformers cannot load (an unknown architecture, an I8 tensor)."""
    from gguf import GGMLQuantizationType, GGUFWriter, quants

    from chat_fixtures import chatml_tokenizer

    tokenizer = tokenizer or chatml_tokenizer()
    writer = GGUFWriter(str(path), architecture)
    writer.add_name("tiny test llama")
    writer.add_context_length(512)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    _add_tokenizer(writer, tokenizer)
    for name, data in _tensors(len(tokenizer), seed).items():
        if name == "blk.0.ffn_up.weight":  # one quantized tensor, dequantized on load
            q8 = GGMLQuantizationType.Q8_0
            writer.add_tensor(name, quants.quantize(data, q8), raw_dtype=q8)
        elif name == "blk.1.ffn_up.weight" and int8_tensor:
            writer.add_tensor(name, (data * 100).astype(np.int8))
        else:
            writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
