"""bAbI qa1-qa5 story generators (v1.2 wording), seeded and correct by construction.

Contract: ``babi_samples(task, n, seed)`` returns ``n`` ``BabiSample``s. A story is a sequence of
statements with questions interleaved; each question becomes one sample holding *every*
statement of its story before it (earlier questions are not statements and are left out).
``supporting`` indexes the facts that prove the answer. Answers come from a simulated world
state that every statement updates, never from parsing text back.

World rules (the whole story stays consistent):
  move  ``{P} moved to|went to|journeyed to|travelled to|went back to the {L}.`` - must change place
        ("went back to" only when P has been at L before, so the wording is never false).
  get   ``{P} got|took|picked up|grabbed the {O}[ there].`` - P's place is known and the object
        lies there, or has never been seen (then it was there all along); nobody holds it.
  drop  ``{P} dropped|left|put down|discarded the {O}[ there].`` - P holds it; it stays at P's place.
  give  ``{P} gave|handed|passed the {O} to {Q}.`` - P holds it, Q is another person at P's place.

Tasks:
  qa1  5 blocks of (2 moves, ``Where is {P}?``); answer = P's last place; support = that move.
  qa2  random get/drop/move; after 2+ statements, with p=1/2, ``Where is the {O}?`` for an object
       whose place is known; support = the get/drop and the holder's last move.
  qa3  same actions; for an object with 2+ known places ``Where was the {O} before the {L}?``,
       L = its current place (asked only when the object was never at L before, so "before the
       L" is unambiguous); answer = the place before; support = facts establishing both places.
  qa4  A, B, C on a north-south or east-west line; facts about (A,B) and (B,C) in either
       orientation and order; ``What is {d} of the B?`` or ``What is the B {d} of?``.
  qa5  get/give/move with Bill, Fred, Jeff, Mary; after a give, 0-5 statements without gives,
       then one of five questions about that give.
Stories stop after 5 questions (qa1: exactly 5 blocks) or ``MAX_STATEMENTS`` statements.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

PEOPLE = ("John", "Mary", "Sandra", "Daniel")
QA5_PEOPLE = ("Bill", "Fred", "Jeff", "Mary")
PLACES = ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office")
OBJECTS = ("apple", "football", "milk")
TASKS = ("qa1", "qa2", "qa3", "qa4", "qa5")
QUESTIONS_PER_STORY = 5
MAX_STATEMENTS = 60

MOVE_VERBS = ("moved to", "went to", "journeyed to", "travelled to")
GET_VERBS = ("got", "took", "picked up", "grabbed")
DROP_VERBS = ("dropped", "left", "put down", "discarded")
GIVE_VERBS = ("gave", "handed", "passed")


@dataclass
class BabiSample:
    task: str
    facts: list[str]
    question: str
    answer: str
    supporting: list[int]  # indices into `facts`


@dataclass
class _World:
    """Ground truth of one story. Fact indices refer to statements, in story order."""

    rng: random.Random
    people: tuple[str, ...]
    facts: list[str] = field(default_factory=list)
    place: dict[str, str] = field(default_factory=dict)  # person -> current place
    visited: dict[str, set] = field(default_factory=dict)  # person -> places ever occupied
    last_move: dict[str, int] = field(default_factory=dict)  # person -> fact index
    holder: dict[str, str] = field(default_factory=dict)  # object -> person holding it
    possession: dict[str, int] = field(default_factory=dict)  # object -> get/give fact index
    floor: dict[str, tuple[str, list[int]]] = field(default_factory=dict)  # obj -> (place, proof)
    history: dict[str, list] = field(default_factory=dict)  # obj -> [(place, proof facts)]

    def say(self, text: str) -> int:
        self.facts.append(text)
        return len(self.facts) - 1

    def there(self) -> str:
        return " there" if self.rng.random() < 0.5 else ""

    # --- statements -------------------------------------------------------------------------
    def move(self, person: str, to: str) -> None:
        assert self.place.get(person) != to, "a move must change place"
        verbs = MOVE_VERBS + (("went back to",) if to in self.visited.get(person, ()) else ())
        idx = self.say(f"{person} {self.rng.choice(verbs)} the {to}.")
        self.place[person] = to
        self.visited.setdefault(person, set()).add(to)
        self.last_move[person] = idx
        for obj, who in self.holder.items():  # carried objects travel along
            if who == person:
                self._record_place(obj, to, [self.possession[obj], idx])

    def get(self, person: str, obj: str) -> None:
        idx = self.say(f"{person} {self.rng.choice(GET_VERBS)} the {obj}{self.there()}.")
        self.holder[obj], self.possession[obj] = person, idx
        self.floor.pop(obj, None)
        self._record_place(obj, self.place[person], [self.last_move[person], idx])

    def drop(self, person: str, obj: str) -> None:
        idx = self.say(f"{person} {self.rng.choice(DROP_VERBS)} the {obj}{self.there()}.")
        del self.holder[obj]
        self.floor[obj] = (self.place[person], sorted({self.last_move[person], idx}))

    def give(self, giver: str, obj: str, receiver: str) -> int:
        idx = self.say(f"{giver} {self.rng.choice(GIVE_VERBS)} the {obj} to {receiver}.")
        self.holder[obj], self.possession[obj] = receiver, idx
        return idx

    def _record_place(self, obj: str, place: str, proof: list[int]) -> None:
        hist = self.history.setdefault(obj, [])
        if not hist or hist[-1][0] != place:
            hist.append((place, sorted(set(proof))))

    # --- what can happen next ---------------------------------------------------------------
    def located(self) -> list[str]:
        return [p for p in self.people if p in self.place]

    def gettable(self, person: str) -> list[str]:
        here = self.place.get(person)
        if here is None:
            return []
        return [o for o in OBJECTS if o not in self.holder and self.floor.get(o, (here,))[0] == here]

    def held_by(self, person: str) -> list[str]:
        return [o for o in OBJECTS if self.holder.get(o) == person]

    def random_move(self, person: str, toward_people: float = 0.0) -> None:
        others = {self.place[q] for q in self.located() if q != person}
        options = [L for L in PLACES if L != self.place.get(person)]
        near = [L for L in options if L in others]
        pool = near if near and self.rng.random() < toward_people else options
        self.move(person, self.rng.choice(pool))

    def random_action(self, allow_drop: bool = True) -> None:
        """One move, get or drop (never a give), chosen among those possible now."""
        rng = self.rng
        person = rng.choice(self.people)
        kinds = ["move", "move"]
        if self.gettable(person):
            kinds.append("get")
        if allow_drop and self.held_by(person):
            kinds.append("drop")
        kind = rng.choice(kinds)
        if kind == "get":
            self.get(person, rng.choice(self.gettable(person)))
        elif kind == "drop":
            self.drop(person, rng.choice(self.held_by(person)))
        else:
            self.random_move(person)


def _sample(task: str, world: _World, question: str, answer: str, support: list[int]) -> BabiSample:
    return BabiSample(task, list(world.facts), question, answer, sorted(set(support)))


# --- qa1 -------------------------------------------------------------------------------------
def _story_qa1(rng: random.Random) -> list[BabiSample]:
    world, out = _World(rng, PEOPLE), []
    for _ in range(QUESTIONS_PER_STORY):
        movers = rng.sample(PEOPLE, 2)
        for person in movers:
            world.random_move(person)
        # Mostly ask about someone who just moved, sometimes about anyone already placed.
        person = rng.choice(movers) if rng.random() < 0.8 else rng.choice(world.located())
        out.append(_sample("qa1", world, f"Where is {person}?", world.place[person],
                           [world.last_move[person]]))
    return out


# --- qa2 / qa3 -------------------------------------------------------------------------------
def _where_is_object(world: _World, obj: str) -> tuple[str, list[int]] | None:
    if obj in world.holder:
        who = world.holder[obj]
        return world.place[who], [world.possession[obj], world.last_move[who]]
    return world.floor.get(obj)


def _story_qa2(rng: random.Random) -> list[BabiSample]:
    world, out, asked = _World(rng, PEOPLE), [], set()
    while len(out) < QUESTIONS_PER_STORY and len(world.facts) < MAX_STATEMENTS:
        world.random_action()
        if len(world.facts) < 2 or rng.random() >= 0.5:
            continue
        known = [(o, _where_is_object(world, o)) for o in OBJECTS]
        known = [(o, k) for o, k in known if k is not None and (o, k[0], tuple(k[1])) not in asked]
        if known:
            obj, (place, proof) = rng.choice(known)
            asked.add((obj, place, tuple(proof)))
            out.append(_sample("qa2", world, f"Where is the {obj}?", place, proof))
    return out


def _story_qa3(rng: random.Random) -> list[BabiSample]:
    world, out, asked = _World(rng, PEOPLE), [], set()
    while len(out) < QUESTIONS_PER_STORY and len(world.facts) < MAX_STATEMENTS:
        # Carriers move more often than in qa2 so objects build a history of places.
        carriers = [p for p in world.located() if world.held_by(p)]
        if carriers and rng.random() < 0.4:
            world.random_move(rng.choice(carriers))
        else:
            world.random_action()
        candidates = []
        for obj, hist in world.history.items():
            earlier = [place for place, _ in hist[:-1]]
            if len(hist) >= 2 and hist[-1][0] not in earlier and (obj, len(hist)) not in asked:
                candidates.append(obj)
        if candidates and rng.random() < 0.5:
            obj = rng.choice(sorted(candidates))
            (before, proof_a), (last, proof_b) = world.history[obj][-2:]
            asked.add((obj, len(world.history[obj])))
            question = f"Where was the {obj} before the {last}?"
            out.append(_sample("qa3", world, question, before, proof_a + proof_b))
    return out


# --- qa4 -------------------------------------------------------------------------------------
_AXES = (("north", "south"), ("east", "west"))  # (first-of-line direction, its opposite)


def _story_qa4(rng: random.Random) -> list[BabiSample]:
    world = _World(rng, ())
    a, b, c = rng.sample(PLACES, 3)  # a -d- b -d- c: a is `d` of b, b is `d` of c
    d, opposite = rng.choice(_AXES)
    pairs = [(a, b), (b, c)]
    rng.shuffle(pairs)
    fact_of = {}
    for first, second in pairs:  # each pair in either orientation
        if rng.random() < 0.5:
            fact_of[(first, second)] = world.say(f"The {first} is {d} of the {second}.")
        else:
            fact_of[(first, second)] = world.say(f"The {second} is {opposite} of the {first}.")
    direction = rng.choice((d, opposite))
    if rng.random() < 0.5:  # "What is {dir} of the b?"
        answer = a if direction == d else c
        question = f"What is {direction} of the {b}?"
    else:  # "What is the b {dir} of?"
        answer = c if direction == d else a
        question = f"What is the {b} {direction} of?"
    pair = (answer, b) if (answer, b) in fact_of else (b, answer)
    return [_sample("qa4", world, question, answer, [fact_of[pair]])]


# --- qa5 -------------------------------------------------------------------------------------
def _give_question(rng: random.Random, giver: str, obj: str, receiver: str) -> tuple[str, str]:
    forms = (
        (f"What did {giver} give to {receiver}?", obj),
        (f"Who gave the {obj} to {receiver}?", giver),
        (f"Who gave the {obj}?", giver),
        (f"Who received the {obj}?", receiver),
        (f"Who did {giver} give the {obj} to?", receiver),
    )
    return rng.choice(forms)


def _try_give(world: _World) -> tuple[str, str, str, int] | None:
    options = [(p, o, q) for p in world.located() for o in world.held_by(p)
               for q in world.located() if q != p and world.place[q] == world.place[p]]
    if not options:
        return None
    giver, obj, receiver = world.rng.choice(options)
    return giver, obj, receiver, world.give(giver, obj, receiver)


def _qa5_step(world: _World) -> None:
    """A get or a move; moves often head to where someone else is, so gives become possible."""
    person = world.rng.choice(world.people)
    if world.gettable(person) and world.rng.random() < 0.5:
        world.get(person, world.rng.choice(world.gettable(person)))
    else:
        world.random_move(person, toward_people=0.6)


def _story_qa5(rng: random.Random) -> list[BabiSample]:
    world, out = _World(rng, QA5_PEOPLE), []
    while len(out) < QUESTIONS_PER_STORY and len(world.facts) < MAX_STATEMENTS:
        gave = _try_give(world) if rng.random() < 0.7 else None
        if gave is None:
            _qa5_step(world)
            continue
        giver, obj, receiver, idx = gave
        for _ in range(rng.randint(0, 5)):  # unrelated statements: no gives
            _qa5_step(world)
        question, answer = _give_question(rng, giver, obj, receiver)
        out.append(_sample("qa5", world, question, answer, [idx]))
    return out


_STORIES = {"qa1": _story_qa1, "qa2": _story_qa2, "qa3": _story_qa3, "qa4": _story_qa4,
            "qa5": _story_qa5}


def babi_stories(task: str, rng: random.Random):
    """Endless stream of samples for ``task``, story after story, drawn from ``rng``."""
    if task not in _STORIES:
        raise ValueError(f"unknown bAbI task {task!r}; expected one of {', '.join(TASKS)}")
    while True:
        yield from _STORIES[task](rng)


def babi_samples(task: str, n: int, seed: int) -> list[BabiSample]:
    """``n`` samples of ``task`` from a ``random.Random(seed)`` stream of stories."""
    stream = babi_stories(task, random.Random(seed))
    return [next(stream) for _ in range(n)]
