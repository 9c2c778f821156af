"""Agentic long-context suite: tool calls whose results are long documents, offline.

In the spirit of GPQA with tools (the paper's third benchmark), every row is a finished
multi-turn conversation in OpenAI function-calling form, ``{"messages", "tools"}``:

  user       a question about invented people (names from random syllables, so it cannot be
             known in advance), and the instruction to answer with the answer only;
  assistant  ``tool_calls``: ``search(query)`` for the person; tool: a short list of matching
             document ids and titles (the right one among distractors);
  assistant  ``tool_calls``: ``open_document(doc_id)``; tool: the long document, distractor
             prose (``haystack``: books or procedural) with the planted fact sentence at a random
             sentence position; ("compare": search and open again for a second person);
  assistant  the final answer (the training target; generation starts after the last tool
             result, through the model's chat template with ``tools``).

Tasks: ``lookup`` - one fact (employer, pet's name or birth town) from one opened document;
``compare`` - "Who was born earlier, X or Y?": both birth years, from two documents, decide.
Length: the rendered conversation (chat template, tools schema, all turns but the answer)
plus ``MAX_NEW_TOKENS`` fits in the length (1024-based labels, 1k-32k) with the documents as
long as that allows (evenly shared); counted in ``tokenizer``'s tokens with its chat template
(whitespace words without a tokenizer). Scoring: normalised exact match (``scoring``, metric
"exact"). Splits: the answer's content key is drawn in the split (``splits.py``), so train and
test rows never share an answer; same arguments -> same rows.
"""

from __future__ import annotations

import json
import random
from typing import Any, Iterable

from focusft.evaluation.babilong import NoiseSource
from focusft.evaluation.haystack import Haystack, make_haystack
from focusft.evaluation.ruler_qa import OCCUPATIONS, PETS, _Names
from focusft.evaluation.splits import check_split, in_split, split_seed
from focusft.evaluation.tokens import as_counter, parse_length

AGENTIC_TASKS = ("lookup", "compare")
MAX_NEW_TOKENS = 16
_FIT_ROUNDS = 5

TOOLS = [
    {"type": "function", "function": {
        "name": "search", "description": "Search the archive; returns matching document ids.",
        "parameters": {"type": "object", "properties": {
            "query": {"type": "string", "description": "what to look for"}},
            "required": ["query"]}}},
    {"type": "function", "function": {
        "name": "open_document", "description": "Return the full text of one document.",
        "parameters": {"type": "object", "properties": {
            "doc_id": {"type": "string", "description": "an id returned by search"}},
            "required": ["doc_id"]}}},
]


def _call(name: str, **arguments: str) -> dict:
    return {"role": "assistant", "content": "",
            "tool_calls": [{"type": "function", "function": {"name": name, "arguments": arguments}}]}


def _tool(name: str, content: str) -> dict:
    return {"role": "tool", "name": name, "content": content}


def _person(rng: random.Random, names: _Names, split: str | None, asked: str | None) -> dict:
    return {"name": names.person(split if asked == "name" else None),
            "town": names.town(split if asked == "town" else None),
            "employer": names.word(split if asked == "employer" else None),
            "pet": names.word(split if asked == "pet" else None),
            "animal": rng.choice(PETS), "job": rng.choice(OCCUPATIONS),
            "year": rng.randint(1800, 1950)}


def _fact(p: dict, kind: str) -> str:
    return {"employer": f"For many years {p['name']} worked for the {p['employer']} company.",
            "pet": f"{p['name']} kept a pet {p['animal']} named {p['pet']}.",
            "town": f"{p['name']} was born in the town of {p['town']}.",
            "year": f"{p['name']} was born in the year {p['year']}."}[kind]


def _question(task: str, people: list[dict], kind: str) -> tuple[str, str]:
    if task == "compare":
        a, b = people
        return (f"Who was born earlier, {a['name']} or {b['name']}?",
                min(people, key=lambda p: p["year"])["name"])
    p = people[0]
    return ({"employer": f"Which company did {p['name']} work for?",
             "pet": f"What is the name of the pet {p['animal']} of {p['name']}?",
             "town": f"In which town was {p['name']} born?"}[kind], p[kind])


class _Conversation:
    """The conversation of one row with document bodies to be sized (see ``_fit``)."""

    def __init__(self, rng: random.Random, names: _Names, task: str, people: list[dict],
                 kind: str, sources: list[NoiseSource]):
        self.question, self.answer = _question(task, people, kind)
        self.people, self.kind, self.sources, self.rng = people, kind, sources, rng
        self.ids = [f"doc-{rng.randint(100, 999)}" for _ in people]
        self.others = [[(f"doc-{rng.randint(100, 999)}", names.person()) for _ in range(2)]
                       for _ in people]
        self.facts = [_fact(p, "year" if task == "compare" else kind) for p in people]
        self.slots = [rng.random() for _ in people]

    def messages(self, doc_tokens: int) -> list[dict]:
        msgs = [{"role": "user", "content": f"{self.question} Use the tools to find out, then "
                                            "reply with the answer only."}]
        for p, doc_id, others, fact, slot, source in zip(self.people, self.ids, self.others,
                                                         self.facts, self.slots, self.sources):
            hits = others + [(doc_id, p["name"])]
            random.Random(doc_id).shuffle(hits)
            listing = "\n".join(f"{i}: Notes on the life of {n}" for i, n in hits)
            noise = source.take(doc_tokens) if doc_tokens > 0 else []
            at = int(slot * (len(noise) + 1))
            body = " ".join(noise[:at] + [fact] + noise[at:])
            msgs += [_call("search", query=p["name"]), _tool("search", listing),
                     _call("open_document", doc_id=doc_id),
                     _tool("open_document", f"Notes on the life of {p['name']}\n\n{body}")]
        return msgs + [{"role": "assistant", "content": self.answer}]


def _count_fn(tokenizer):
    counter = as_counter(tokenizer)
    tok = counter.tokenizer
    if tok is None or not getattr(tok, "chat_template", None):
        return lambda msgs: counter.count("\n".join(
            m["content"] + json.dumps(m.get("tool_calls", "")) for m in msgs[:-1]))
    return lambda msgs: counter.count(tok.apply_chat_template(
        msgs[:-1], tools=TOOLS, tokenize=False, add_generation_prompt=True))


def _fit(conv: _Conversation, length: int, count) -> list[dict]:
    """The longest documents with count(conversation) + MAX_NEW_TOKENS <= length."""
    budget = length - MAX_NEW_TOKENS
    fixed = count(conv.messages(0))
    if fixed > budget:
        raise ValueError(f"length {length} is too small: the conversation alone needs {fixed}")
    per_doc = (budget - fixed) // len(conv.people)
    best = conv.messages(0)
    for _ in range(_FIT_ROUNDS):
        msgs = conv.messages(per_doc)
        used = count(msgs)
        if used <= budget:
            best = msgs
            if budget - used <= max(8, budget // 100):
                break
        per_doc = max(0, int(per_doc * (budget - fixed) / max(1, used - fixed)))
    return best


def agentic_rows(tasks: Iterable[str], lengths: Iterable[int | str], n: int, seed: int,
                 split: str | None = "train", tokenizer: Any = None,
                 haystack: Haystack | str | None = None) -> list[dict]:
    """``n`` rows per (task, length), task-major (see the module docstring)."""
    check_split(split)
    hay = haystack if hasattr(haystack, "sentences") else make_haystack(haystack, seed)
    counter, rows = as_counter(tokenizer), []
    count = _count_fn(counter)
    for task in tasks:
        if task not in AGENTIC_TASKS:
            raise ValueError(f"unknown agentic task {task!r}; expected {', '.join(AGENTIC_TASKS)}")
        for length in [parse_length(x) for x in lengths]:
            rng = random.Random(split_seed(seed, split, "agentic", task, length))
            for _ in range(n):
                names = _Names(rng)
                kind = "year" if task == "compare" else rng.choice(("employer", "pet", "town"))
                people = [_person(rng, names, split if task == "lookup" else None,
                                  None if task == "compare" else kind)
                          for _ in range(2 if task == "compare" else 1)]
                if task == "compare":  # distinct years; the answer name drawn in the split
                    while people[0]["year"] == people[1]["year"] or not in_split(
                            min(people, key=lambda p: p["year"])["name"], split):
                        people = [_person(rng, names, None, None) for _ in range(2)]
                sources = [NoiseSource(hay.sentences(rng), counter) for _ in people]
                conv = _Conversation(rng, names, task, people, kind, sources)
                rows.append({"messages": _fit(conv, length, count), "tools": TOOLS,
                             "suite": "agentic", "task": task, "length": length,
                             "split": split or "", "target": conv.answer, "question": conv.question,
                             "references": [conv.answer], "metric": "exact", "answer_prefix": "",
                             "max_new_tokens": MAX_NEW_TOKENS, "prompts": "focusft",
                             "evidence": []})
    return rows
