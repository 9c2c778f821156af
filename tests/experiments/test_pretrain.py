"""`focusft pretrain`: seeded recipes, BOS-led rows, the sink metric, a reloadable checkpoint."""

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from focusft.sources import default
from focusft.errors import UserError
from focusft.experiments.pretrain import RECIPES, pretrain, recipe_config
from focusft.experiments.pretrain_data import BOS, Segments, token_rows, with_bos
from focusft.experiments.pretrain_sinks import first_token_ratio, uniform_share

MIX = {"book": 1, "babi": 1, "ruler": 1, "copy": 1}


@pytest.fixture(scope="module")
def tokenizer():
    return with_bos(default.load_default_tokenizer())


def test_rows_open_with_bos_and_are_seeded(tokenizer):
    bos = tokenizer.convert_tokens_to_ids(BOS)
    rows = token_rows(tokenizer, 128, seed=3, mix=MIX, haystack="procedural", ruler_len=448)
    first = [next(rows) for _ in range(12)]
    assert all(len(r) == 128 and r[0] == bos and bos not in r[1:] for r in first)
    again = token_rows(tokenizer, 128, seed=3, mix=MIX, haystack="procedural", ruler_len=448)
    assert [next(again) for _ in range(12)] == first
    stream = token_rows(tokenizer, 128, seed=3, mix=MIX, haystack="procedural", bos=False)
    assert all(bos not in next(stream) for _ in range(6))
    text = tokenizer.decode([t for r in first for t in r])
    assert "Question:" in text and "What is the code of the" in text


def test_bigram_backcopy_is_one_token_words_and_copies_after_triggers(tokenizer):
    segments = Segments(seed=5, haystack="procedural", tokenizer=tokenizer)
    words, table, triggers = segments._bigram_table()
    copies = 0
    for _ in range(5):
        text = segments.text("bigram")
        walk = text.split()
        assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) == len(walk)
        for i in range(1, len(walk) - 1):  # one token per word (above), the first one too
            if walk[i] in triggers:
                assert walk[i + 1] == walk[i - 1]
                copies += 1
            else:
                assert walk[i + 1] in table[walk[i]]
    assert copies > 0 and len(words) == 64 and len(triggers) == 3


def test_chat_template_writes_bos_first(tokenizer):
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=True,
                                        return_dict=True)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1


def test_sink_ratio_is_one_under_uniform_attention(tokenizer):
    model = default.build_default_model(tokenizer, seed=0)
    with torch.no_grad():  # zero queries: every score is 0, attention is uniform over k <= q
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.zero_()
            layer.self_attn.q_proj.bias.zero_()
    rows = [list(range(1, 33)), list(range(40, 72))]
    out = first_token_ratio(model, rows)
    assert out["uniform"] == pytest.approx(uniform_share(32), abs=1e-6)
    assert all(r == pytest.approx(1.0, abs=0.01) for r in out["ratio"])
    assert len(out["first"]) == model.config.num_hidden_layers


def test_pretrain_records_sinks_and_reloads(tmp_path):
    out = tmp_path / "base"
    cfg = recipe_config("sinks", str(out), steps=4, seq_len=64, batch_size=2, warmup=1,
                        sink_every=2, sink_rows=2, log_every=2, haystack="procedural")
    summary = pretrain(cfg, log=lambda *_: None)
    assert summary["steps"] == 4 and summary["tokens"] == 4 * 2 * 64
    assert [h["step"] for h in summary["history"]] == [2, 4] and math.isfinite(summary["final_loss"])
    assert [s["step"] for s in summary["sinks"]] == [0, 2, 4]
    assert all(len(s["ratio"]) == 6 and s["middle_ratio"] > 0 for s in summary["sinks"])
    saved = json.loads((out / "pretrain.json").read_text())
    assert saved["final_loss"] == summary["final_loss"] and saved["recipe"] == "sinks"
    assert (out / "model.safetensors").exists() and (out / "sinks.png").exists()
    assert not list(tmp_path.glob(".base-*"))
    model, tok = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    assert tok.bos_token == BOS and model.config.vocab_size == len(tok)
    assert torch.isfinite(model(input_ids=torch.arange(1, 17)[None]).logits).all()


def test_same_seed_same_weights(tmp_path):
    def weights(name):
        pretrain(recipe_config("sinks", str(tmp_path / name), steps=2, seq_len=32, batch_size=2,
                               warmup=1, sink_every=0, sink_rows=1, haystack="procedural"),
                 log=lambda *_: None)
        return AutoModelForCausalLM.from_pretrained(tmp_path / name).model.embed_tokens.weight

    assert torch.equal(weights("a"), weights("b"))


def test_recipes_resolve_and_bad_input_is_rejected(tmp_path):
    for name in RECIPES:
        assert recipe_config(name, str(tmp_path / name)).recipe == name
    with pytest.raises(UserError, match="--recipe"):
        recipe_config("nope", str(tmp_path / "x"))
    with pytest.raises(UserError, match="--steps"):
        pretrain(recipe_config("sinks", str(tmp_path / "x"), steps=0), log=lambda *_: None)
    assert not (tmp_path / "x").exists()
