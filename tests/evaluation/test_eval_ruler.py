"""RULER tasks: references placed where they must be, CWE/FWE counts, lengths."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest
from eval_helpers import n_tokens

from focusft.evaluation.ruler import RULER_TASKS, ruler_sample
from focusft.evaluation.ruler_niah import NIAH_TASKS
from focusft.evaluation.ruler_words import fwe_counts
from focusft.evaluation.splits import split_of

LENGTH = 4096


@pytest.fixture(scope="module")
def samples(tokenizer):
    return {t: ruler_sample(t, LENGTH, tokenizer, random.Random(42)) for t in RULER_TASKS}


def test_thirteen_tasks():
    assert len(RULER_TASKS) == 13


@pytest.mark.parametrize("task", RULER_TASKS)
def test_length_within_tolerance(task, samples, tokenizer):
    s = samples[task]
    total = n_tokens(tokenizer, s.text) + s.max_new_tokens
    # Stated tolerance: never over the length, at most 3 % under it (one haystack unit).
    assert LENGTH * 0.97 <= total <= LENGTH, total
    assert s.text.endswith(" " + s.answer_prefix) and not s.prompt.endswith(s.answer_prefix)
    assert s.references and s.answer_prefix == s.answer_prefix.strip()
    assert s.metric == ("part" if task.startswith("qa") else "all")


@pytest.mark.parametrize("task", list(NIAH_TASKS))
def test_niah_needles_hold_the_references(task, samples):
    s, spec = samples[task], NIAH_TASKS[task]
    needles = re.findall(r"One of the special magic (?:numbers|uuids) for (\S+) is: (\S+)\.",
                         s.prompt)
    by_value = {v: k for k, v in needles}
    assert all(ref in by_value for ref in s.references)
    queried = {by_value[ref] for ref in s.references}
    assert len(queried) == spec.queries and len(s.references) == spec.queries * spec.values_per_key
    assert all(k in s.prompt.split("\n")[-1] for k in queried)  # asked in the question
    assert sorted(s.prompt[a:e] for a, e in s.evidence_spans) == sorted(
        f"One of the special magic {spec.value} for {by_value[r]} is: {r}." for r in s.references)
    if spec.haystack == "needle":
        assert len(needles) > 10 and len({k for k, _ in needles}) == len(needles)
    else:
        assert len(needles) == spec.keys * spec.values_per_key
    single = len(s.references) == 1
    assert s.answer_prefix.endswith(" is" if single else " are")
    # Singular tasks use singular wording throughout (header, question, prefix), as RULER does.
    header = s.prompt.split("\n")[0]
    assert header.startswith("A special magic number" if single and spec.value == "numbers" else
                             "A special magic uuid" if single else "Some special magic")
    if spec.haystack == "noise":  # RULER's noise: the paragraph as one unit per line
        lines = s.prompt.split("\n")[1:-1]
        assert sum(line.startswith("The grass is green.") for line in lines) == len(lines) - 1


def test_vt_chain(samples):
    s = samples["vt"]
    statements = [s.prompt[a:e] for a, e in s.evidence_spans]
    names = s.references
    assert len(names) == 5 and re.fullmatch(r"VAR [A-Z]{5} = \d{5}\.", statements[0])
    assert statements[1:] == [f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:])]
    assert "they are:" in s.answer_prefix and s.prompt.count("Memorize and track") == 2  # example


def test_vt_and_cwe_examples_at_every_length(tokenizer):
    for length in (2048, 4096):
        vt = ruler_sample("vt", length, tokenizer, random.Random(0))
        cwe = ruler_sample("cwe", length, tokenizer, random.Random(0))
        assert vt.prompt.count("Memorize and track") == 2
        assert cwe.prompt.count("Below is a numbered list") == 2


def test_cwe_common_words_are_references(samples):
    s = samples["cwe"]
    listing = s.prompt.split("Memorize the ones that appear most often.\n")[-1].split("\nQuestion")[0]
    words = re.findall(r"\d+\. (\w+)", listing)
    counts = Counter(words)
    top = counts.most_common(11)
    assert {w for w, _ in top[:10]} == set(s.references)
    assert all(c == 30 for _, c in top[:10]) and top[10][1] == 3
    assert set(counts.values()) == {30, 3}
    assert [int(n) for n in re.findall(r"(\d+)\. \w+", listing)] == list(range(1, len(words) + 1))


def test_cwe_below_4k_uses_6_and_1(tokenizer):
    s = ruler_sample("cwe", 2048, tokenizer, random.Random(0))
    listing = s.prompt.split("Memorize the ones that appear most often.\n")[-1]
    counts = Counter(re.findall(r"\d+\. (\w+)", listing.split("\nQuestion")[0]))
    assert set(counts.values()) == {6, 1}
    assert {w for w, c in counts.items() if c == 6} == set(s.references)


def test_fwe_counts_follow_zipf(samples):
    s = samples["fwe"]
    text = s.prompt.split("appear most often. ")[1].split("\nQuestion")[0]
    counts = Counter(text.split())
    n, vocab = s.meta["n"], s.meta["vocab"]
    assert vocab == (LENGTH - 50) // 50
    expected = [c for c in fwe_counts(n, vocab) if c > 0]
    assert sorted(counts.values(), reverse=True) == expected
    # Rank 1 is the noise word '....' (the prompt says to ignore it); the answer is ranks 2-4.
    ranked = [w for w, _ in counts.most_common(4)]
    assert ranked[0] == "...." and ranked[1:] == s.references and "'....'" in s.prompt
    assert expected[0] == int(n / (3.141592653589793 ** 2 / 6))


@pytest.mark.parametrize("task", ["qa_1", "qa_2"])
def test_qa_gold_documents(task, samples):
    s = samples[task]
    gold = [s.prompt[a:e] for a, e in s.evidence_spans]
    assert len(gold) == (1 if task == "qa_1" else 2)
    assert s.references[0] in " ".join(gold)
    question = s.prompt.split("Question: ")[-1]
    person = re.search(r"([A-Z]\w+ [A-Z]\w+)", question.replace("Which", "").replace("What", "")
                       .replace("Who", "").replace("On", "").replace("In", "")).group(1)
    assert any(g.startswith(person) for g in gold)
    assert s.prompt.count(f"{person} is a") == 1  # the person has exactly one document
    assert s.meta["documents"] > 20


def test_split_restricts_answers(tokenizer):
    for task in ["niah_multivalue", "vt", "cwe", "fwe", "qa_2"]:
        s = ruler_sample(task, 2048, tokenizer, random.Random(1), split="validation")
        assert all(split_of(r) == "validation" for r in s.references), task


def test_same_rng_same_sample(tokenizer):
    a = ruler_sample("niah_single_2", 2048, tokenizer, random.Random(5))
    b = ruler_sample("niah_single_2", 2048, tokenizer, random.Random(5))
    assert a == b


def test_unknown_task():
    with pytest.raises(ValueError):
        ruler_sample("niah_double", 4096)
