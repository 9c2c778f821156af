"""Tokenization throughput of the loss-mask rules of `focusft.data.templates`, in rows per second.

    python -m focusft.benchmarks.tokenize_bench --turns 1 8 64 --rows 30 --chat_template qwen3.jinja

Each row is a system message plus N user/assistant turns of prose (about 40 tokens a message),
tokenized with the embedded default tokenizer, whose template carries ``{% generation %}``
markers. The same rows go through each rule: ``generation`` (one render with transformers'
generation indices), ``prefix`` (2 renders per assistant turn plus one; what every template got
before the rules existed) and ``located`` (one render with every assistant turn swapped for a
sentinel, plus one). Each ``--chat_template FILE`` is measured in the same run on the same
vocabulary with the rule it gets (e.g. trl's ``qwen3.jinja``: ``located``), and, for the
``located`` rule, also with one render per assistant turn (``one by one``: how the rule found
its regions before, still its fallback). One process, one thread; the number printed is
rows / wall-clock seconds of ``ChatEncoder.encode``, best of 3 passes.
"""

from __future__ import annotations

import argparse
import os
import time

from focusft.data.templates import RULES, ChatEncoder, template_has_generation_markers
from focusft.sources.default import ProseGenerator, load_default_tokenizer


def conversation(turns: int, seed: int) -> list[dict]:
    prose = ProseGenerator(seed)
    messages = [{"role": "system", "content": "Answer from the story."}]
    for _ in range(turns):
        messages.append({"role": "user", "content": " ".join(prose.sentences(4))})
        messages.append({"role": "assistant", "content": " ".join(prose.sentences(4))})
    return messages


def rows_per_second(encoder: ChatEncoder, rows: list[list[dict]], repeats: int = 3) -> float:
    """Best of ``repeats`` passes (a busy machine only ever makes a pass slower)."""
    encoder.encode(rows[0])  # warm caches (compiled template)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for messages in rows:
            encoder.encode(messages)
        best = min(best, time.perf_counter() - start)
    return len(rows) / best


def _encoders(tokenizer, name: str | None) -> dict[str, ChatEncoder]:
    """The encoders measured for one template: every rule for the default, its own for others."""
    if name is None:
        rules = [r for r in RULES if r != "generation" or template_has_generation_markers(tokenizer.chat_template)]
        return {rule: ChatEncoder(tokenizer, rule=rule) for rule in rules}
    encoder = ChatEncoder(tokenizer)
    out = {f"{name} {encoder.rule}": encoder}
    if encoder.rule == "located":
        slow = ChatEncoder(tokenizer)
        slow.at_once = False
        out[f"{name} located one by one"] = slow
    return out


def measure(turns: list[int], n_rows: int, templates: dict[str, str] | None = None) -> list[dict]:
    """Per turn count: tokens per row and rows/s of each measured encoder (see the docstring)."""
    tokenizers = {None: load_default_tokenizer()}
    for name, text in (templates or {}).items():
        tokenizers[name] = load_default_tokenizer()
        tokenizers[name].chat_template = text
    results = []
    for n in turns:
        rows = [conversation(n, seed) for seed in range(n_rows)]
        result = {"turns": n, "tokens_per_row": len(ChatEncoder(tokenizers[None]).encode(rows[0])[0])}
        for name, tokenizer in tokenizers.items():
            for column, encoder in _encoders(tokenizer, name).items():
                result[column] = rows_per_second(encoder, rows)
        results.append(result)
    return results


def table(results: list[dict]) -> str:
    columns = [c for c in results[0] if c not in ("turns", "tokens_per_row")]
    ratio = "generation" in columns and "prefix" in columns
    lines = ["| turns | tokens/row | " + " | ".join(f"{c} rows/s" for c in columns)
             + (" | generation / prefix |" if ratio else " |"),
             "|---|---|" + "---|" * (len(columns) + ratio)]
    for r in results:
        speeds = " | ".join(f"{r[c]:.1f}" for c in columns)
        tail = f" | {r['generation'] / r['prefix']:.1f}x |" if ratio else " |"
        lines.append(f"| {r['turns']} | {r['tokens_per_row']} | {speeds}{tail}")
    return "\n".join(lines)


def _items(values: list[str]) -> list[str]:
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", nargs="+", default=["1", "8", "64"],
                        help="user/assistant turns per row (space- or comma-separated)")
    parser.add_argument("--rows", type=int, default=50, help="rows per measurement")
    parser.add_argument("--chat_template", nargs="+", default=[], metavar="FILE",
                        help=".jinja chat templates to measure too, same vocabulary (space- or "
                             "comma-separated)")
    args = parser.parse_args(argv)
    turns = [int(x) for x in _items(args.turns)]
    templates = {}
    for path in _items(args.chat_template):
        with open(path, encoding="utf-8") as handle:
            templates[os.path.splitext(os.path.basename(path))[0]] = handle.read()
    print(table(measure(turns, args.rows, templates)))


if __name__ == "__main__":
    main()
