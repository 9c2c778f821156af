"""Multi-token SFT tasks: sentence answers that the official rule scores, disjoint splits."""

import random

import pytest

from focusft.sources import default
from focusft.evaluation.babi import babi_samples
from focusft.evaluation.chat import babi_key
from focusft.evaluation.scoring import babilong_correct
from focusft.experiments.sft_tasks import BABI_TASKS, babi_rows, distinct_babi, sentence_answer


@pytest.fixture(scope="module")
def tokenizer():
    return default.load_default_tokenizer()


@pytest.mark.parametrize("task", BABI_TASKS)
def test_sentence_answers_are_scored_right_and_wrong(task, tokenizer):
    for sample in babi_samples(task, 40, seed=1):
        answer = sentence_answer(sample)
        assert answer.endswith(".") and answer.count(".") == 1
        assert len(tokenizer(answer, add_special_tokens=False)["input_ids"]) >= 4
        assert sample.answer in answer
        assert babilong_correct(answer, sample.answer, sample.question, task), (sample, answer)
        wrong = "Bill" if sample.answer != "Bill" else "Fred"
        if task != "qa5":
            wrong = next(p for p in ("garden", "office", "bedroom", "hallway") if p != sample.answer
                         and p not in sample.question)
        assert not babilong_correct(answer.replace(sample.answer, wrong), sample.answer,
                                    sample.question, task)


def test_known_formats():
    qa2 = next(s for s in babi_samples("qa2", 5, seed=0))
    obj = qa2.question[len("Where is the "):-1]
    assert sentence_answer(qa2) == f"The {obj} is in the {qa2.answer}."


def test_babi_rows_hold_out_test_and_keep_lengths(tokenizer):
    train = distinct_babi("qa1", 30, seed=0, split="train")
    test = distinct_babi("qa1", 30, seed=0, split="test")
    assert not {babi_key(s) for s in train} & {babi_key(s) for s in test}
    rows = babi_rows(["qa2"], [256, 1024], 3, seed=0, split="test", tokenizer=tokenizer)
    assert [r["length"] for r in rows] == [256] * 3 + [1024] * 3
    for row in rows:
        user, answer = (m["content"] for m in row["messages"])
        assert answer == sentence_answer_of(row) and row["split"] == "test"
        assert "Answer with one sentence in this format: The OBJECT is in the PLACE." in user
        for a, b in row["evidence"]:  # evidence spans point at the story's facts
            assert user[a:b].endswith(".") and " " in user[a:b]
        n = len(tokenizer(user, add_special_tokens=False)["input_ids"])
        assert n <= row["length"] + 120
        assert babilong_correct(answer, row["target"], row["question"], row["task"])
        assert not babilong_correct("The milk is nowhere.", row["target"], row["question"], row["task"])


def sentence_answer_of(row):
    return row["messages"][1]["content"]

