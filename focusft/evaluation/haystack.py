"""Distractor prose ("haystack") for long-context samples.

Contract: a haystack has ``sentences(rng) -> Iterator[str]``, an endless stream of sentences
drawn from ``rng`` (a ``random.Random``); the same rng state gives the same stream.

``BookHaystack(directory)``: every ``*.txt`` under ``directory`` (recursively) is a book. As in
BABILong: pick a random book and offset, cut a chunk, split it into sentences with nltk's
untrained ``PunktSentenceTokenizer`` (no downloaded data needed), drop the chunk's first and
last sentence (they are usually cut mid-way), skip sentences under ``min_words`` (10)
whitespace tokens, then continue with another random chunk, forever. Whitespace inside a
sentence is collapsed to single spaces (books hard-wrap lines).

``ProceduralProse(seed)``: built-in, needs no files. Grammatical, content-free sentences from
templates filled with ``wonderwords`` nouns, adjectives and verbs. Words that contain any bAbI
person, place, object or direction (e.g. "kitchen", "officer", "billboard", "milky") are
removed from the lists, and the templates use none, so the noise can never state or suggest a
bAbI answer. Profanities are removed too.

``make_haystack(spec)``: ``None`` / ``"procedural"`` -> ProceduralProse; ``"pg19"`` -> the PG-19
test split's books through ``datasets`` (BABILong's haystack; from the local cache when offline,
a clear error when it is not cached); ``"books"`` -> the project's book folder
(``default_books_dir()``: ``$FOCUSFT_HAYSTACK``, else ``../shared/data/haystack`` next to the
project root); ``"auto"`` -> that folder when present, else ProceduralProse; anything else -> a
directory of ``*.txt`` books. ``describe_haystack(spec)`` names the source for reports.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
import random
import re
from pathlib import Path
from typing import Iterator, Protocol

from focusft.errors import UserError

# Every word a bAbI fact or answer can contain; noise words containing one are banned.
BABI_WORDS = (
    "john", "mary", "sandra", "daniel", "bill", "fred", "jeff",
    "bathroom", "bedroom", "garden", "hallway", "kitchen", "office",
    "apple", "football", "milk", "north", "south", "east", "west",
)


class Haystack(Protocol):
    def sentences(self, rng: random.Random) -> Iterator[str]: ...


# --- books -----------------------------------------------------------------------------------
class BookHaystack:
    """Sentences sampled from the plain-text books in a directory."""

    def __init__(self, directory: str | Path | None, chunk_chars: int = 20_000, min_words: int = 10,
                 texts: list[str] | None = None):
        if texts is None:
            root = Path(directory)
            if not root.is_dir():
                raise UserError(f"haystack directory {str(root)!r} does not exist")
            paths = sorted(root.rglob("*.txt"))
            texts = [p.read_text(encoding="utf-8", errors="replace") for p in paths]
        self.books = [b for b in texts if len(b.split()) > 2 * min_words]
        if not self.books:
            raise UserError(f"haystack {str(directory)!r} holds no usable .txt books")
        self.chunk_chars = chunk_chars
        self.min_words = min_words
        self._splitter = _punkt()

    def sentences(self, rng: random.Random) -> Iterator[str]:
        while True:
            book = rng.choice(self.books)
            start = rng.randrange(max(1, len(book) - self.chunk_chars))
            chunk = book[start:start + self.chunk_chars]
            for raw in self._splitter.tokenize(chunk)[1:-1]:  # ends are cut mid-sentence
                sentence = " ".join(raw.split())
                if len(sentence.split()) >= self.min_words:
                    yield sentence


@functools.lru_cache(maxsize=1)
def _punkt():
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    return PunktSentenceTokenizer()  # untrained: default abbreviation rules, no downloads


# --- procedural prose ------------------------------------------------------------------------
# Slots: {n} noun, {a} adjective, {v} bare verb. No article "a/an" anywhere: it would need
# per-word agreement that word lists cannot guarantee.
_TEMPLATES = (
    "Nobody could say why the {n} was so {a}, yet the {n} remained {a} all the same.",
    "For a while the {n} and the {n} stood side by side, {a} and {a}, as if waiting for something.",
    "There was no reason to {v} the {n}, and yet the {a} {n} kept returning to the same old question.",
    "Some people believed that the {n} was {a}, while others thought it merely {a} and rather {a}.",
    "Whatever the {n} had once meant, it now seemed {a}, like the {n} of some {a} {n} long forgotten.",
    "They talked about the {n} for a long time, but nobody could decide whether it was {a} or {a}.",
    "Later that season the {a} {n} was quietly replaced by another {n}, which was even more {a}.",
    "It would be hard to {v} the {n} without first learning to {v} the {n} that came before it.",
    "The story of the {n} is long and {a}, and most of it has little to do with the {n} at all.",
    "Every so often someone would try to {v} the {n}, but the attempt always turned out {a}.",
    "Between the {n} and the {n} there lay nothing but {a} silence and the memory of something {a}.",
    "Nothing about the {n} was {a}, and nothing about the {n} was ever meant to be {a} either.",
    "In those days it was common to {v} the {n} before dawn, when everything still felt {a} and {a}.",
    "One could hardly {v} the {a} {n} without thinking of the {n} that had come long before.",
    "The old {n} had always been {a}, though few of those who spoke of it could ever explain why.",
    "If the {n} seemed {a} that year, it was only because the {n} beside it was even more {a}.",
    "Many years passed before anyone thought to {v} the {n} again, and by then it was {a} and {a}.",
    "It is said that every {a} {n} hides some {n}, and that no {n} stays {a} for very long.",
)
_SLOT = re.compile(r"\{([nav])\}")


def _clean_words(filename: str, banned: frozenset[str]) -> list[str]:
    text = importlib.resources.files("wonderwords.assets").joinpath(filename).read_text("utf-8")
    words = {w.strip() for w in text.splitlines()}
    return sorted(w for w in words if w.isalpha() and w.islower() and w not in banned
                  and not any(b in w for b in BABI_WORDS))


@functools.lru_cache(maxsize=1)
def prose_vocabulary() -> dict[str, list[str]]:
    """Filtered wonderwords lists: {"n": nouns, "a": adjectives, "v": bare verbs}."""
    profanity = importlib.resources.files("wonderwords.assets").joinpath("profanitylist.txt")
    banned = frozenset(w.strip().lower() for w in profanity.read_text("utf-8").splitlines())
    verbs = _clean_words("verblist.txt", banned)
    # The list mixes in a few past forms ("acted"); templates need bare infinitives.
    verbs = [v for v in verbs if not v.endswith("ed") or v.endswith("eed")]
    return {"n": _clean_words("nounlist.txt", banned),
            "a": _clean_words("adjectivelist.txt", banned), "v": verbs}


class ProceduralProse:
    """Endless grammatical filler sentences that carry no bAbI-relevant content."""

    def __init__(self, seed: int = 0):
        self.seed = seed  # mixed into each stream so two generators with other seeds differ
        self.vocabulary = prose_vocabulary()

    def sentences(self, rng: random.Random) -> Iterator[str]:
        local = random.Random(rng.getrandbits(64) ^ self.seed)
        vocab = self.vocabulary
        while True:
            template = local.choice(_TEMPLATES)
            yield _SLOT.sub(lambda m: local.choice(vocab[m.group(1)]), template)


def default_books_dir() -> Path | None:
    """``$FOCUSFT_HAYSTACK``, else ``../shared/data/haystack`` beside the project root, if present."""
    env = os.environ.get("FOCUSFT_HAYSTACK")
    root = Path(__file__).resolve().parents[2]  # the project root (a source checkout)
    candidate = Path(env) if env else root.parent / "shared" / "data" / "haystack"
    return candidate if candidate.is_dir() else None


def pg19_books(split: str = "test") -> list[str]:
    """PG-19 books through ``datasets`` (cached copy when offline); UserError when unavailable."""
    try:
        import datasets

        data = datasets.load_dataset("deepmind/pg19", split=split)
        return list(data["text"])
    except Exception as err:  # not cached and no network, or datasets refuses the script
        raise UserError(
            f"--haystack pg19: PG-19 ({split} split) is not available through `datasets` here: "
            f"{str(err).splitlines()[0] if str(err) else type(err).__name__}. Download it once "
            "where there is network (datasets.load_dataset('deepmind/pg19', split='test')) so it "
            "is cached, or use --haystack books / a folder of .txt books / procedural") from None


def resolve_haystack(spec: str | Path | None) -> str:
    """The concrete source a spec stands for: "procedural", "pg19" or a directory path."""
    if spec is None or str(spec) == "procedural":
        return "procedural"
    if str(spec) in ("auto", "books"):
        books = default_books_dir()
        if books is None and str(spec) == "books":
            raise UserError("--haystack books: no book folder found (set FOCUSFT_HAYSTACK to a "
                            "directory of .txt books)")
        return str(books) if books is not None else "procedural"
    return str(spec)


def describe_haystack(spec: str | Path | None) -> str:
    source = resolve_haystack(spec)
    if source == "procedural":
        return "procedural prose (built-in templates, wonderwords vocabulary)"
    if source == "pg19":
        return "PG-19 test split books (datasets: deepmind/pg19)"
    return f"books: the *.txt files under .../{'/'.join(Path(source).parts[-3:])}"


def make_haystack(spec: str | Path | None, seed: int = 0) -> Haystack:
    """See the module docstring for the accepted specs."""
    source = resolve_haystack(spec)
    if source == "procedural":
        return ProceduralProse(seed)
    if source == "pg19":
        return BookHaystack("pg19", texts=pg19_books())
    return BookHaystack(source)
