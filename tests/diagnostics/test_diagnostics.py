"""Attention diagnostics: exact values on hand-built attention, chunked == dense, the probe leaves
the forward unchanged, evidence spans land on the right tokens, the CLI and the callback."""

import json
import math

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, TrainerState

from chat_fixtures import chatml_tokenizer, llama3_tokenizer
from focusft import cli
from focusft.diagnostics import (DiagnosticsCallback, MassCollector, measure, probing,
                                 render_sample)
from focusft.diagnostics import mass as mass_module
from focusft.core.fast_weights import FastWeights
from focusft.core.masks import AttentionLayout, dense_mask
from tiny import make_batch, tiny_qwen2

ROWS = [[(5, 0), (3, 1), (4, 0), (2, 1)], [(6, 0), (4, 1)], [(2, 0), (1, 1)]]  # multi-turn + pads


def one_row(loss: list[int]) -> tuple[AttentionLayout, torch.Tensor]:
    loss_mask = torch.tensor([loss], dtype=torch.bool)
    return AttentionLayout.glm(loss_mask, [len(loss)]), loss_mask


# ---------------------------------------------------------------------------------------------
# Hand-built attention: known values
# ---------------------------------------------------------------------------------------------


def test_all_weight_on_first_token_and_gqa_head_mean():
    """Head 0 puts all weight on token 0; head 1 (q = 0) is uniform. Two query heads, one kv head."""
    layout, loss_mask = one_row([0] * 6 + [1] * 3)
    query = torch.zeros(1, 2, 9, 4)
    query[0, 0, :, 0] = 1.0
    key = torch.zeros(1, 1, 9, 4)
    key[0, 0, 0, 0] = 1000.0  # exp(-500) underflows: head 0's weight on token 0 is exactly 1
    probe = MassCollector(layout, loss_mask, sink_k=4)
    probe.observe(0, query, key, scale=1.0)
    d = probe.result()
    n = torch.tensor([7.0, 8.0, 9.0])  # response queries 6, 7, 8 see keys [0, q + 1)
    want = {"sink_first": (0.5 * (1 + 1 / n)).mean(), "sink": (0.5 * (1 + 4 / n)).mean(),
            "context": (0.5 * 2 / n).mean(), "response": (0.5 * torch.tensor([1, 2, 3]) / n).mean()}
    for name, value in want.items():
        assert d.per_sample[name][0, 0].item() == pytest.approx(value.item(), abs=1e-6), name
    assert math.isnan(d.per_sample["evidence"][0, 0]) and math.isnan(d.per_sample["evidence_rank"][0, 0])


def test_pure_sink_gives_mass_one_and_zero_engagement():
    layout, loss_mask = one_row([0] * 5 + [1] * 2)
    query = torch.ones(1, 2, 7, 2)
    key = torch.zeros(1, 2, 7, 2)
    key[0, :, 0] = 500.0
    probe = MassCollector(layout, loss_mask, sink_k=1, evidence=torch.tensor([[0, 0, 1, 1, 0, 0, 0]]))
    probe.observe(3, query, key, scale=1.0)
    d = probe.result()
    assert d.layers == [3]
    assert d.per_sample["sink_first"].item() == 1.0 and d.per_sample["sink"].item() == 1.0
    assert d.per_sample["context"].item() == 0.0 and d.per_sample["evidence"].item() == 0.0
    assert d.per_sample["response"].item() == 0.0


def test_uniform_attention_and_evidence_rank():
    """Query (1, 0): the weight of key k is proportional to exp(c_k). Reference in plain math."""
    c = [3.0, 0.0, 1.0, 2.0, 0.5, 1.5, 0.0, 2.5, 0.2, 1.0, 0.0, 0.3, 0.1]
    loss = [0] * 10 + [1] * 3
    evidence = torch.zeros(1, 13, dtype=torch.bool)
    evidence[0, [4, 5, 8]] = True  # context keys: 2..9 (sink_k = 2)
    layout, loss_mask = one_row(loss)
    query = torch.zeros(1, 1, 13, 2)
    query[..., 0] = 1.0
    key = torch.zeros(1, 1, 13, 2)
    key[0, 0, :, 0] = torch.tensor(c)
    probe = MassCollector(layout, loss_mask, sink_k=2, evidence=evidence, chunk_size=2)
    probe.observe(0, query, key, scale=1.0)
    d = probe.result()
    received = [0.0] * 13
    masses = {"sink_first": 0.0, "sink": 0.0, "context": 0.0, "response": 0.0, "evidence": 0.0}
    for q in (10, 11, 12):
        z = sum(math.exp(x) for x in c[: q + 1])
        w = [math.exp(x) / z for x in c[: q + 1]]
        masses["sink_first"] += w[0] / 3
        masses["sink"] += (w[0] + w[1]) / 3
        masses["context"] += sum(w[2:10]) / 3
        masses["response"] += sum(w[10:]) / 3
        masses["evidence"] += (w[4] + w[5] + w[8]) / 3
        for k, x in enumerate(w):
            received[k] += x / 3
    for name, value in masses.items():
        assert d.per_sample[name].item() == pytest.approx(value, abs=1e-6), name
    torch.testing.assert_close(d.received[0][0], torch.tensor(received), atol=1e-6, rtol=0)
    # Context keys 2..9 by received mass: 7 (c=2.5), 3 (2.0), 5 (1.5), 2 = 9 (1.0), 4, 8, 6:
    # the best evidence token, 5, has two context tokens above it.
    assert d.per_sample["evidence_rank"].item() == 3.0
    assert d.per_sample["evidence_rank_frac"].item() == pytest.approx(3 / 8)


def test_sample_without_response_is_nan_and_skipped_in_means():
    loss_mask = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    layout = AttentionLayout.glm(loss_mask, [4, 4])
    probe = MassCollector(layout, loss_mask, sink_k=1)
    probe.observe(0, torch.zeros(2, 1, 4, 2), torch.zeros(2, 1, 4, 2), None)
    d = probe.result()
    assert math.isnan(d.per_sample["sink"][0, 1])
    assert d.layer_means()["sink_first"] == pytest.approx([(1 / 3 + 1 / 4) / 2])


# ---------------------------------------------------------------------------------------------
# Chunked probe == dense reference on a real (tiny) model
# ---------------------------------------------------------------------------------------------


def dense_reference(model, batch, layout, sink_k, evidence):
    """Metrics from eager attention's full (B, H, S, S) weights, computed the obvious way."""
    lo, hi = layout.key_ranges()
    additive = torch.zeros(hi.shape[0], 1, hi.shape[1], hi.shape[1])
    additive[~dense_mask(lo, hi)] = torch.finfo(torch.float32).min
    model.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = model(batch["input_ids"], attention_mask=additive, output_attentions=True).attentions
    real = batch["attention_mask"].bool()
    pos = torch.arange(real.shape[1])
    sink = real & (pos < sink_k)
    context = real & ~sink & ~batch["loss_mask"]
    classes = {"sink_first": real & (pos == 0), "sink": sink, "context": context,
               "response": real & ~sink & batch["loss_mask"], "evidence": context & evidence}
    out = {name: torch.zeros(len(attentions), real.shape[0]) for name in classes}
    received = []
    for l, att in enumerate(attentions):
        abar = att.mean(1)  # (B, S, S)
        rec = []
        for b in range(real.shape[0]):
            queries = (batch["loss_mask"][b] & real[b]).nonzero().flatten()
            rows = abar[b, queries]  # (Q, S)
            for name, cls in classes.items():
                out[name][l, b] = (rows * cls[b]).sum(1).mean()
            rec.append(rows.mean(0)[: int(real[b].sum())])
        received.append(rec)
    return out, received


@pytest.mark.parametrize("kind", ["glm", "causal"])
@pytest.mark.parametrize("chunk_size", [1, 3, None])
def test_chunked_equals_dense(kind, chunk_size):
    batch = make_batch(ROWS, seed=1)
    evidence = torch.zeros_like(batch["loss_mask"])
    evidence[0, [5, 9]] = True
    evidence[1, 4] = True
    model = tiny_qwen2(layers=3)  # GQA: 4 query heads, 2 kv heads
    lengths = batch["attention_mask"].sum(1).tolist()
    layout = (AttentionLayout.glm(batch["loss_mask"], lengths) if kind == "glm"
              else AttentionLayout.causal(lengths, batch["input_ids"].shape[1]))
    want, want_received = dense_reference(model, batch, layout, 2, evidence)
    got = measure(model, batch, kind, sink_k=2, chunk_size=chunk_size, evidence=evidence)
    for name, value in want.items():
        if name == "evidence":
            value[:, 2] = float("nan")  # row 2 has no evidence
        torch.testing.assert_close(got.per_sample[name], value, atol=1e-5, rtol=1e-5,
                                   equal_nan=True, msg=name)
    for b in range(3):
        torch.testing.assert_close(got.received[b], torch.stack([r[b] for r in want_received]),
                                   atol=1e-5, rtol=1e-5)
    total = got.per_sample["sink"] + got.per_sample["context"] + got.per_sample["response"]
    torch.testing.assert_close(total, torch.ones_like(total))


def test_score_blocks_respect_chunk_size(monkeypatch):
    widths = []
    real = mass_module.head_mean_weights

    def spy(query, key, *args):
        widths.append(query.shape[1])
        return real(query, key, *args)

    monkeypatch.setattr(mass_module, "head_mean_weights", spy)
    measure(tiny_qwen2(layers=2), make_batch(ROWS), "glm", chunk_size=2)
    assert widths and max(widths) <= 2
    assert sum(widths) == 2 * (3 + 2 + 4 + 1)  # every response query of every layer, once


# ---------------------------------------------------------------------------------------------
# The probe does not change the forward
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["glm", "causal"])
def test_probe_output_equals_layout_attention(kind):
    batch = make_batch(ROWS)
    lengths = batch["attention_mask"].sum(1).tolist()
    layout = (AttentionLayout.glm(batch["loss_mask"], lengths) if kind == "glm"
              else AttentionLayout.causal(lengths, batch["input_ids"].shape[1]))
    model = tiny_qwen2(layers=2).eval()
    model.set_attn_implementation("focusft")
    with torch.no_grad():
        plain = model(batch["input_ids"], layout=layout).logits
        probe = MassCollector(layout, batch["loss_mask"])
        with probing(model):
            probed = model(batch["input_ids"], layout=layout, probe=probe).logits
    assert torch.equal(plain, probed)
    assert probe.result().layers == [0, 1]
    assert model.config._attn_implementation == "focusft"  # restored


def test_measure_restores_training_mode():
    model = tiny_qwen2(layers=2).train()
    measure(model, make_batch(ROWS))
    assert model.training and model.config._attn_implementation == "sdpa"


# ---------------------------------------------------------------------------------------------
# Evidence char spans -> tokens
# ---------------------------------------------------------------------------------------------

FACT = "Mary went to the kitchen."
PROMPT = f"John took the apple. {FACT} Sandra slept. Where is Mary?"


def evidence_text(tokenizer, sample) -> str:
    return tokenizer.decode([t for t, e in zip(sample.input_ids, sample.evidence) if e])


@pytest.mark.parametrize("make_tokenizer, prompt", [(chatml_tokenizer, PROMPT),
                                                     (llama3_tokenizer, "  " + PROMPT + " ")])
def test_evidence_spans_map_to_tokens(make_tokenizer, prompt):
    tokenizer = make_tokenizer()  # llama3's template trims the content: offsets must shift
    start = prompt.index(FACT)
    row = {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": "kitchen"}],
           "evidence": [[start, start + len(FACT)]]}
    sample = render_sample(tokenizer, row, "row 0")
    text = evidence_text(tokenizer, sample)
    assert FACT in text and "John" not in text and "Sandra" not in text
    assert not any(e and m for e, m in zip(sample.evidence, sample.loss_mask))


def test_bad_evidence_span_is_a_user_error():
    from focusft.errors import UserError

    row = {"messages": [{"role": "user", "content": "abc"}, {"role": "assistant", "content": "x"}],
           "evidence": [[1, 9]]}
    with pytest.raises(UserError, match=r"evidence\[0\]"):
        render_sample(chatml_tokenizer(), row, "data.jsonl row 3")


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def save_checkpoint(path, seed):
    tokenizer = chatml_tokenizer()
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, tie_word_embeddings=False)
    Qwen2ForCausalLM(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_cli_writes_table_json_and_plots(tmp_path, capsys):
    models = [save_checkpoint(tmp_path / "sft", 0), save_checkpoint(tmp_path / "focus", 1)]
    start = PROMPT.index(FACT)
    rows = [{"messages": [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": "kitchen"}],
             "evidence": [[start, start + len(FACT)]], "target": "kitchen", "task": "qa1"},
            {"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}]}]
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    argv = ["diagnose", "--data", str(data), "--out", str(out), "--samples", "5", "--sink_k", "2",
            "--chunk_size", "3"]
    argv += [flag for m in models for flag in ("--model", m)]
    assert cli.main(argv) == 0
    table = (out / "table.md").read_text()
    assert "### mask: glm" in table and "### mask: causal" in table and "sft sink@1" in table
    assert table in capsys.readouterr().out
    report = json.loads((out / "metrics.json").read_text())
    assert report["samples"] == 2 and set(report["models"]) == {"sft", "focus"}
    glm = report["models"]["focus"]["glm"]
    assert glm["layers"] == [0, 1]
    for layer in range(2):
        parts = sum(glm["per_layer"][m][layer] for m in ("sink", "context", "response"))
        assert parts == pytest.approx(1.0, abs=1e-5)
    assert glm["per_sample"]["evidence"][1] == [None, None]  # row 1 has no evidence
    assert 0 < glm["per_layer"]["evidence"][0] <= glm["per_layer"]["context"][0]
    for png in ("layers.png", "strip.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_cli_user_errors(tmp_path, capsys):
    assert cli.main(["diagnose", "--model", str(tmp_path / "nope"), "--data", "x.jsonl"]) == 2
    assert "--model" in capsys.readouterr().err
    model = save_checkpoint(tmp_path / "m", 0)
    assert cli.main(["diagnose", "--model", model, "--data", "x.jsonl", "--samples", "0"]) == 2
    assert "--samples" in capsys.readouterr().err
    assert cli.main(["diagnose", "--model", model, "--data", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Training callback
# ---------------------------------------------------------------------------------------------


class FakeTrainer:
    """What the callback uses of a Trainer: add_callback, log, and the fast weights."""

    def __init__(self, fast=None):
        self.fast, self.callbacks, self.logged = fast, [], []

    def add_callback(self, callback):
        self.callbacks.append(callback)

    def log(self, logs):
        self.logged.append(logs)


def test_callback_logs_and_appends_jsonl(tmp_path):
    model = tiny_qwen2(layers=2).train()
    callback = DiagnosticsCallback(make_batch(ROWS), every_n_steps=2, out_path=str(tmp_path / "run"))
    state = TrainerState()
    callback.on_train_begin(None, state, None, model=model)
    for step in range(1, 5):
        state.global_step = step
        callback.on_step_end(None, state, None, model=model)
    lines = [json.loads(x) for x in (tmp_path / "run" / "diagnostics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [0, 2, 4]
    assert set(lines[0]["per_layer"]) >= {"sink", "context"} and len(lines[0]["per_layer"]["sink"]) == 2
    assert lines[0]["mean"]["evidence"] is None
    assert [x["step"] for x in state.log_history] == [0, 2, 4]
    assert "diag/sink" in state.log_history[0] and "diag/evidence" not in state.log_history[0]
    assert model.training


def test_callback_measures_with_fast_weights_off(tmp_path):
    batch = make_batch(ROWS)
    model = tiny_qwen2(layers=2)
    want = measure(model, batch).averaged()
    fast = FastWeights(model, rank=2, alpha=4.0, layer_fraction=0.5)
    fast.reset([1, 2, 3, 4, 5])  # a training micro-batch of another size, with non-zero memory
    for slot in fast.slots:
        slot.b.normal_()
    trainer = FakeTrainer(fast)
    callback = DiagnosticsCallback(batch, 1, str(tmp_path / "d.jsonl")).attach(trainer)
    assert trainer.callbacks == [callback]
    callback.on_step_end(None, TrainerState(global_step=1), None, model=model)
    assert trainer.logged[0]["diag/sink"] == pytest.approx(want["sink"])
    assert trainer.logged[0]["diag/context"] == pytest.approx(want["context"])
    assert fast.enabled


def test_one_callback_per_mask_attaches_without_the_duplicate_warning(tmp_path):
    import logging

    from transformers import Trainer, TrainingArguments

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger("transformers.trainer_callback")
    log.addHandler(handler)
    try:
        trainer = Trainer(model=tiny_qwen2(layers=2),
                          args=TrainingArguments(output_dir=str(tmp_path), report_to=[],
                                                 use_cpu=True))
        glm = DiagnosticsCallback(make_batch(ROWS), 1, str(tmp_path), mask="glm").attach(trainer)
        causal = DiagnosticsCallback(make_batch(ROWS), 1, str(tmp_path), mask="causal",
                                     prefix="diag_causal/").attach(trainer)
    finally:
        log.removeHandler(handler)
    mine = [c for c in trainer.callback_handler.callbacks if isinstance(c, DiagnosticsCallback)]
    assert mine == [glm, causal]
    assert not [r for r in records if "already one" in r.getMessage()]
