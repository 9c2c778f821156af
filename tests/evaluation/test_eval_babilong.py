"""BABILong construction: fact order, length in tokens, evidence spans, seeds, haystacks."""

from __future__ import annotations

import random

import pytest
from eval_helpers import n_tokens

from focusft.evaluation.babi import babi_samples
from focusft.evaluation.babilong import (babilong_sample, babilong_samples, build_prompt,
                                         context_budget, parse_length)
from focusft.evaluation.haystack import (BABI_WORDS, BookHaystack, ProceduralProse,
                                         make_haystack)
from focusft.errors import UserError


def test_parse_length():
    assert [parse_length(x) for x in ("0k", "1k", "4k", "128k", "256", 300)] == [
        0, 1024, 4096, 131072, 256, 300]
    assert [parse_length(x, kilo=1000) for x in ("1k", "128k", "256")] == [1000, 128000, 256]
    with pytest.raises(ValueError):
        parse_length("4m")


def test_context_budget_rule():
    assert context_budget(0) == 0
    # BABILong's lengths are 1000-based: "1k" leaves 700 tokens of noise + facts.
    assert context_budget(1000) == 700 and context_budget(128000) == 127700
    assert context_budget(256) == 256 - 77  # 300/1000 of the length, rounded up


def _facts_in_order(context: str, facts: list[str]) -> bool:
    pos = 0
    for fact in facts:
        pos = context.find(fact, pos)
        if pos < 0:
            return False
        pos += len(fact)
    return True


@pytest.mark.parametrize("task", ["qa1", "qa2", "qa3", "qa4", "qa5"])
@pytest.mark.parametrize("length", ["1k", "4k", 512])
def test_facts_in_order_length_and_evidence(task, length, tokenizer):
    for b in babi_samples(task, 4, seed=11):
        s = babilong_sample(b, length, tokenizer, ProceduralProse(), random.Random(3))
        assert _facts_in_order(s.context, b.facts)
        budget = context_budget(parse_length(length, kilo=1000))
        used = n_tokens(tokenizer, s.context)
        # Stated tolerance: at most the budget, at most max(10 tokens, 0.5 %) below it.
        assert budget - max(10, budget // 200) <= used <= budget, (used, budget)
        assert [s.prompt[a:e] for a, e in s.evidence_spans] == [b.facts[i] for i in b.supporting]
        assert s.prompt.endswith(f"</context>\n\nQuestion: {b.question}")
        assert s.target == b.answer and s.length == parse_length(length, kilo=1000)


def test_zero_k_is_facts_only(tokenizer):
    b = babi_samples("qa2", 3, 0)[-1]
    s = babilong_sample(b, "0k", tokenizer)
    assert s.context == " ".join(b.facts)
    prompt, offset = build_prompt("qa2", s.context, b.question)
    assert s.prompt == prompt and s.prompt[offset:offset + len(s.context)] == s.context


def test_few_shot_option():
    with_ex, _ = build_prompt("qa1", "ctx", "Where is John?", few_shot=True)
    without, _ = build_prompt("qa1", "ctx", "Where is John?", few_shot=False)
    assert "<example>" in with_ex and "<example>" not in without
    assert without.count("\n\n\n") == 0


def test_same_seed_same_samples(tokenizer):
    a = babilong_samples("qa3", "1k", 3, seed=4, tokenizer=tokenizer)
    b = babilong_samples("qa3", "1k", 3, seed=4, tokenizer=tokenizer)
    c = babilong_samples("qa3", "1k", 3, seed=5, tokenizer=tokenizer)
    assert a == b and a != c


def test_book_haystack_sentences(tmp_path):
    long_s = "This sentence has more than ten words in it, {} of them in fact."
    text = " ".join([long_s.format(i) + " Too short." for i in range(300)])
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "book.txt").write_text(text)
    hay = BookHaystack(tmp_path, chunk_chars=2000)
    it = hay.sentences(random.Random(0))
    got = [next(it) for _ in range(50)]
    assert all(len(s.split()) >= 10 for s in got)
    assert all(s.startswith("This sentence has") for s in got)  # first/last (cut) dropped
    assert got == [next(BookHaystack(tmp_path, 2000).sentences(random.Random(0))) for _ in
                   range(1)] + got[1:]


def test_book_haystack_errors(tmp_path):
    with pytest.raises(UserError):
        make_haystack(tmp_path / "missing")
    with pytest.raises(UserError):
        BookHaystack(tmp_path)  # no .txt files


def test_procedural_prose_has_no_babi_words():
    it = ProceduralProse(3).sentences(random.Random(1))
    sentences = [next(it) for _ in range(3000)]
    lower = " ".join(sentences).lower()
    assert not [w for w in BABI_WORDS if w in lower]
    assert all(len(s.split()) >= 10 and s[0].isupper() and s.endswith(".") for s in sentences)
    assert len(set(sentences)) == len(sentences)
    assert isinstance(make_haystack(None), ProceduralProse)
    assert isinstance(make_haystack("procedural"), ProceduralProse)


def test_pg19_haystack_uses_datasets_or_says_why(monkeypatch):
    import datasets

    from focusft.evaluation.haystack import describe_haystack

    def missing(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub (offline)")

    monkeypatch.setattr(datasets, "load_dataset", missing)
    with pytest.raises(UserError, match="--haystack pg19.*not available.*cached"):
        make_haystack("pg19")
    book = " ".join(f"Sentence number {i} of the cached book has more than ten words." for i in
                    range(400))
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: {"text": [book]})
    hay = make_haystack("pg19")
    assert isinstance(hay, BookHaystack) and "cached book" in next(hay.sentences(random.Random(0)))
    assert describe_haystack("pg19").startswith("PG-19")


def test_auto_haystack_finds_the_book_folder(tmp_path, monkeypatch):
    from focusft.evaluation.haystack import describe_haystack, resolve_haystack

    (tmp_path / "b.txt").write_text(" ".join(["A sentence with well over ten words in it, truly."]
                                             * 200))
    monkeypatch.setenv("FOCUSFT_HAYSTACK", str(tmp_path))
    assert resolve_haystack("auto") == str(tmp_path) and isinstance(make_haystack("books"),
                                                                  BookHaystack)
    assert describe_haystack("auto").startswith("books")
    monkeypatch.setenv("FOCUSFT_HAYSTACK", str(tmp_path / "none"))
    assert resolve_haystack("auto") == "procedural"
    with pytest.raises(UserError, match="--haystack books"):
        make_haystack("books")
