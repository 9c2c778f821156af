"""Likelihood scoring: cached candidate scoring == full forwards of prompt + candidate under the
same layout, for both inference masks; the records' metrics follow lm-eval's definitions."""

import pytest
import torch

from focusft.core.masks import AttentionLayout
from focusft.evaluation.choices import row_choices
from focusft.evaluation.loglik import candidate_logprobs
from tiny import tiny_llama, tiny_qwen2


def full_forward_logprobs(model, prompt, candidate, mode, prompt_mask=None):
    """No cache: prompt + candidate in one forward, the candidate a response block."""
    seq = list(prompt) + list(candidate)
    loss_mask = torch.tensor([list(prompt_mask or [0] * len(prompt)) + [1] * len(candidate)])
    if mode == "prefix":
        layout = AttentionLayout.glm(loss_mask, [len(seq)])
    else:
        layout = AttentionLayout.causal([len(seq)], len(seq))
    logits = model(input_ids=torch.tensor([seq]), layout=layout).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    return [logp[len(prompt) - 1 + t, tok].item() for t, tok in enumerate(candidate)]


@pytest.mark.parametrize("mode", ["causal", "prefix"])
@pytest.mark.parametrize("build", [tiny_qwen2, tiny_llama])
def test_cached_candidates_equal_full_forwards(mode, build):
    model = build(seed=4).eval()
    model.set_attn_implementation("focusft")
    prompt = list(range(5, 25))
    pmask = [0] * 8 + [1] * 4 + [0] * 8 if mode == "prefix" else None  # an earlier response
    candidates = [[40, 41, 42], [43], [44, 45, 46, 47, 48], [40, 41, 49]]
    got = candidate_logprobs(model, prompt, candidates, mode, pmask, pad_id=0)
    for cand, lp in zip(candidates, got):
        want = full_forward_logprobs(model, prompt, cand, mode, pmask)
        assert len(lp) == len(cand)
        torch.testing.assert_close(torch.tensor(lp), torch.tensor(want), rtol=1e-5, atol=1e-5)


def test_prefix_scores_differ_from_causal():
    model = tiny_qwen2(seed=5).eval()
    model.set_attn_implementation("focusft")
    prompt, cands = list(range(5, 25)), [[30, 31], [32, 33]]
    causal = candidate_logprobs(model, prompt, cands, "causal")
    prefix = candidate_logprobs(model, prompt, cands, "prefix")
    assert abs(causal[0][0] - prefix[0][0]) > 1e-4


def test_single_token_candidates():
    model = tiny_qwen2(seed=6).eval()
    model.set_attn_implementation("focusft")
    prompt = list(range(5, 15))
    got = candidate_logprobs(model, prompt, [[20], [21]], "causal")
    assert got[0] == pytest.approx(full_forward_logprobs(model, prompt, [20], "causal"), abs=1e-5)


def test_choices_of_every_babilong_task_and_agentic_compare():
    from focusft.evaluation.agentic import agentic_rows
    from focusft.evaluation.chat import make_chat_rows
    from focusft.experiments.sft_tasks import babi_rows

    rows = make_chat_rows("babilong", ["qa1", "qa2", "qa3", "qa4", "qa5"], ["0k"], 4, 0, "test")
    rows += babi_rows(["qa1", "qa2", "qa3", "qa4", "qa5"], [0], 4, 0, "test")
    rows += agentic_rows(["compare"], ["1k"], 2, 0, "test", None, "procedural")
    for row in rows:
        choices, gold = row_choices(row)
        assert choices[gold] == row["messages"][-1]["content"]
        assert len(set(choices)) == len(choices) >= 2
    assert row_choices(agentic_rows(["lookup"], ["1k"], 1, 0, "test", None, "procedural")[0]) is None


def test_paired_difference_interval_and_mcnemar():
    import random

    from focusft.evaluation.paired import mcnemar_exact, paired_difference

    rng = random.Random(0)
    a = [float(rng.random() < 0.7) for _ in range(400)]
    b = [float(rng.random() < 0.5) for _ in range(400)]
    d = paired_difference(a, b, strata=[i % 2 for i in range(400)])
    assert d["interval"][0] < d["difference"] < d["interval"][1]
    half = (d["interval"][1] - d["interval"][0]) / 2
    disc = (d["n10"] + d["n01"]) / 400  # the normal approximation of EVAL.md
    assert half == pytest.approx(1.96 * ((disc - d["difference"] ** 2) / 400) ** 0.5, rel=0.15)
    assert d["mcnemar_p"] == mcnemar_exact(d["n10"], d["n01"]) < 1e-3
    same = paired_difference(a, a)
    assert same["difference"] == 0 and same["interval"] == [0, 0] and same["mcnemar_p"] == 1.0


def test_mcnemar_matches_scipy_binomial_test():
    scipy = pytest.importorskip("scipy.stats")
    from focusft.evaluation.paired import mcnemar_exact

    for n10, n01 in [(3, 9), (15, 4), (7, 7), (0, 5)]:
        want = scipy.binomtest(n10, n10 + n01, 0.5).pvalue
        assert mcnemar_exact(n10, n01) == pytest.approx(want, rel=1e-9)


def test_eval_cost_measures_both_ways(tmp_path, capsys):
    from chat_fixtures import save_chat_model
    from focusft.benchmarks import eval_cost

    model = save_chat_model(tmp_path / "m", layers=2, positions=2048)
    assert eval_cost.main(["--model", str(model), "--lengths", "0k", "--rows", "2"]) == 0
    out = capsys.readouterr().out
    assert "| 0k | 2 |" in out and "loglik / generate" in out
