"""Scorers against cases taken straight from the BABILong and RULER rules."""

from __future__ import annotations

import pytest

from focusft.evaluation.scoring import (babilong_accuracy, babilong_correct, normalize_prediction,
                                        ruler_score, string_match_all, string_match_part)


def test_target_found_alone_is_correct():
    assert babilong_correct("kitchen", "kitchen", "Where is Mary?", "qa1")
    assert babilong_correct("  The Kitchen", "kitchen", "Where is Mary?", "qa1")


def test_label_in_question_is_excluded():
    # qa3 names the current place in the question; repeating it is not a second answer.
    q = "Where was the milk before the garden?"
    assert babilong_correct("before the garden it was in the office", "office", q, "qa3")
    assert babilong_correct("Fred gave it", "fred", "Who gave the milk to Bill?", "qa5")


def test_two_labels_found_is_wrong():
    assert not babilong_correct("kitchen or office", "kitchen", "Where is Mary?", "qa1")
    assert not babilong_correct("bill and fred", "bill", "Who received the milk?", "qa5")


def test_text_after_first_period_is_ignored():
    assert babilong_correct("kitchen. Before that she was in the office", "kitchen",
                            "Where is Mary?", "qa1")
    assert not babilong_correct("She is. In the kitchen", "kitchen", "Where is Mary?", "qa1")


def test_prompt_echo_is_cut():
    assert not babilong_correct("<context> kitchen", "kitchen", "Where is Mary?", "qa1")
    assert babilong_correct("hallway <example> office", "hallway", "Where is Mary?", "qa1")


def test_wrong_or_missing_target():
    assert not babilong_correct("office", "kitchen", "Where is Mary?", "qa1")
    assert not babilong_correct("I do not know", "kitchen", "Where is Mary?", "qa1")


def test_babilong_accuracy_mean_times_100():
    outs, targets = ["kitchen", "office", "garden hallway", "hallway"], ["kitchen"] * 3 + ["hallway"]
    assert babilong_accuracy(outs, targets, ["Where is John?"] * 4, "qa1") == 50.0


def test_unknown_babilong_task():
    with pytest.raises(ValueError):
        babilong_correct("x", "y", "z", "qa9")


def test_string_match_all_partial_credit():
    preds = ["a1 and A2 then", "nothing"]
    refs = [["a1", "a2", "a3", "a4"], ["x"]]
    assert string_match_all(preds[:1], refs[:1]) == 50.0
    assert string_match_all(preds, refs) == 25.0


def test_string_match_part_any_reference():
    assert string_match_part(["the answer is Paris"], [["paris", "london"]]) == 100.0
    assert string_match_part(["Paris", "Rome"], [["paris"], ["madrid"]]) == 50.0


def test_normalisation_controls_to_newline():
    assert normalize_prediction("\t abc\x00def \x1f") == "abc\ndef"
    # A reference split by a control character is no longer found.
    assert string_match_all(["12\x0034"], [["1234"]]) == 0.0


def test_ruler_score_dispatch():
    assert ruler_score("all", ["a b"], [["a", "c"]]) == 50.0
    assert ruler_score("part", ["a b"], [["a", "c"]]) == 100.0
    with pytest.raises(ValueError):
        ruler_score("exact", ["a"], [["a"]])


def test_wilson_interval_known_values():
    from focusft.evaluation.scoring import wilson_interval

    lo, hi = wilson_interval(0.5, 20)
    assert abs(lo - 0.2993) < 1e-3 and abs(hi - 0.7007) < 1e-3
    lo, hi = wilson_interval(1.0, 10)  # a perfect score still has a lower bound below 1
    assert abs(lo - 0.7225) < 1e-3 and abs(hi - 1.0) < 1e-9
    assert wilson_interval(0.0, 0) == (0.0, 1.0)


def test_normalized_exact_match_and_sample_scores():
    from focusft.evaluation.scoring import normalized_exact_match, sample_score

    assert normalized_exact_match(" The Kenzaerk company.\nmore", ["Kenzaerk company"])
    assert not normalized_exact_match("Kenzaerk or Vum", ["Kenzaerk"])
    assert sample_score("all", "a1 x", ["a1", "a2"]) == 0.5
    assert sample_score("part", "a1 x", ["a1", "a2"]) == 1.0
    assert sample_score("babilong", "kitchen", ["kitchen"], "Where is Mary?", "qa1") == 1.0
    assert sample_score("exact", "kitchen.", ["Kitchen"]) == 1.0
