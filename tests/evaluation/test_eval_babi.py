"""bAbI generators against an independent tracker that re-reads the generated sentences."""

from __future__ import annotations

import re

import pytest

from focusft.evaluation.babi import TASKS, babi_samples

MOVE = re.compile(r"^(\w+) (?:moved to|went to|journeyed to|travelled to|went back to) the (\w+)\.$")
GET = re.compile(r"^(\w+) (?:got|took|picked up|grabbed) the (\w+)(?: there)?\.$")
DROP = re.compile(r"^(\w+) (?:dropped|left|put down|discarded) the (\w+)(?: there)?\.$")
GIVE = re.compile(r"^(\w+) (?:gave|handed|passed) the (\w+) to (\w+)\.$")
REL = re.compile(r"^The (\w+) is (north|south|east|west) of the (\w+)\.$")
OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}


class Tracker:
    """Replays facts; asserts each is physically possible; answers questions."""

    def __init__(self):
        self.at, self.holder, self.floor, self.trail = {}, {}, {}, {}
        self.gives, self.rel = [], {}
        self.visited = {}

    def where_obj(self, obj):
        return self.at[self.holder[obj]] if obj in self.holder else self.floor.get(obj)

    def _moved(self, obj, place):
        trail = self.trail.setdefault(obj, [])
        if not trail or trail[-1] != place:
            trail.append(place)

    def replay(self, fact: str) -> None:
        if m := MOVE.match(fact):
            who, place = m.groups()
            assert self.at.get(who) != place, f"move without change: {fact}"
            if "went back to" in fact:
                assert place in self.visited.get(who, set()), f"false 'back': {fact}"
            self.at[who] = place
            self.visited.setdefault(who, set()).add(place)
            for obj, h in self.holder.items():
                if h == who:
                    self._moved(obj, place)
        elif m := GET.match(fact):
            who, obj = m.groups()
            assert obj not in self.holder and who in self.at, fact
            assert self.floor.get(obj, self.at[who]) == self.at[who], f"not here: {fact}"
            self.holder[obj] = who
            self.floor.pop(obj, None)
            self._moved(obj, self.at[who])
        elif m := DROP.match(fact):
            who, obj = m.groups()
            assert self.holder.get(obj) == who, fact
            del self.holder[obj]
            self.floor[obj] = self.at[who]
        elif m := GIVE.match(fact):
            giver, obj, receiver = m.groups()
            assert self.holder.get(obj) == giver and giver != receiver, fact
            assert self.at[giver] == self.at[receiver], f"not together: {fact}"
            self.holder[obj] = receiver
            self.gives.append((giver, obj, receiver))
        elif m := REL.match(fact):
            x, d, y = m.groups()  # x is d of y  <=>  y is opposite(d) of x
            self.rel[(d, y)] = x
            self.rel[(OPPOSITE[d], x)] = y
        else:
            raise AssertionError(f"unparsed fact: {fact!r}")

    def answer(self, q: str) -> str:
        if m := re.match(r"^Where is (\w+)\?$", q):
            return self.at[m.group(1)]
        if m := re.match(r"^Where is the (\w+)\?$", q):
            return self.where_obj(m.group(1))
        if m := re.match(r"^Where was the (\w+) before the (\w+)\?$", q):
            trail = self.trail[m.group(1)]
            assert trail[-1] == m.group(2) and trail.count(m.group(2)) == 1
            return trail[-2]
        if m := re.match(r"^What is (\w+) of the (\w+)\?$", q):
            return self.rel[(m.group(1), m.group(2))]
        if m := re.match(r"^What is the (\w+) (\w+) of\?$", q):
            return self.rel[(OPPOSITE[m.group(2)], m.group(1))]
        giver, obj, receiver = self.gives[-1]
        forms = {f"What did {giver} give to {receiver}?": obj,
                 f"Who gave the {obj} to {receiver}?": giver, f"Who gave the {obj}?": giver,
                 f"Who received the {obj}?": receiver, f"Who did {giver} give the {obj} to?": receiver}
        return forms[q]


@pytest.mark.parametrize("task", TASKS)
def test_answers_agree_with_independent_tracker(task):
    samples = babi_samples(task, 300, seed=7)
    for s in samples:
        tracker = Tracker()
        for fact in s.facts:
            tracker.replay(fact)
        assert tracker.answer(s.question) == s.answer, (s.facts, s.question)
        assert s.supporting and all(0 <= i < len(s.facts) for i in s.supporting)
        # The answer is stated by (at least) one supporting fact.
        assert any(s.answer in s.facts[i] for i in s.supporting), s


def test_supporting_facts_per_task():
    s1 = babi_samples("qa1", 50, 1)
    assert all(len(s.supporting) == 1 and s.facts[s.supporting[0]].startswith(s.question.split()[2][:-1])
               for s in s1)
    s2 = babi_samples("qa2", 50, 1)
    assert all(len(s.supporting) == 2 for s in s2)
    s5 = babi_samples("qa5", 50, 1)
    assert all(GIVE.match(s.facts[s.supporting[0]]) for s in s5)


def test_story_structure_qa1_and_qa4():
    qa1 = babi_samples("qa1", 5, 3)  # one story: 2, 4, ..., 10 statements
    assert [len(s.facts) for s in qa1] == [2, 4, 6, 8, 10]
    assert all(len(s.facts) == 2 for s in babi_samples("qa4", 20, 3))


def test_seeded():
    assert babi_samples("qa3", 20, 5) == babi_samples("qa3", 20, 5)
    assert babi_samples("qa3", 20, 5) != babi_samples("qa3", 20, 6)


def test_unknown_task():
    with pytest.raises(ValueError, match="qa9"):
        babi_samples("qa9", 1, 0)
