"""Tokenization throughput of the loss-mask rules of `focusft.data.templates`, in rows per second.

    python -m focusft.experiments.tokenize_bench --turns 1,8,64 --rows 50

Each row is a system message plus N user/assistant turns of prose (about 40 tokens a message),
tokenized with the embedded default tokenizer, whose template carries ``{% generation %}``
markers. The same rows go through each rule: ``generation`` (one render with transformers'
generation indices), ``prefix`` (2 renders per assistant turn plus one; what every template got
before the rules existed) and ``located`` (1-2 renders per assistant turn plus one). With
``--chat_template FILE`` another template is measured on the same vocabulary (e.g. trl's
``qwen3.jinja``; its rows need the ``located`` rule, the ``prefix`` column is timed for
comparison only). One process,
one thread; the number printed is rows / wall-clock seconds of ``ChatEncoder.encode``, best
of 3 passes.
"""

from __future__ import annotations

import argparse
import time

from focusft.sources.default import ProseGenerator, load_default_tokenizer
from focusft.data.templates import RULES, ChatEncoder, template_has_generation_markers


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


def measure(turns: list[int], n_rows: int, chat_template: str | None = None) -> list[dict]:
    tokenizer = load_default_tokenizer()
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    rules = [r for r in RULES if r != "generation" or template_has_generation_markers(tokenizer.chat_template)]
    results = []
    for n in turns:
        rows = [conversation(n, seed) for seed in range(n_rows)]
        tokens = len(ChatEncoder(tokenizer).encode(rows[0])[0])
        speeds = {rule: rows_per_second(ChatEncoder(tokenizer, rule=rule), rows) for rule in rules}
        results.append({"turns": n, "tokens_per_row": tokens, **speeds})
    return results


def table(results: list[dict]) -> str:
    lines = ["| turns | tokens/row | " + " | ".join(f"{r} rows/s" for r in RULES) + " | generation / prefix |",
             "|---|---|" + "---|" * (len(RULES) + 1)]
    for r in results:
        speeds = " | ".join(f"{r[rule]:.1f}" if rule in r else "-" for rule in RULES)
        ratio = f"{r['generation'] / r['prefix']:.1f}x" if "generation" in r else "-"
        lines.append(f"| {r['turns']} | {r['tokens_per_row']} | {speeds} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", default="1,8,64", help="comma-separated user/assistant turns per row")
    parser.add_argument("--rows", type=int, default=50, help="rows per measurement")
    parser.add_argument("--chat_template", default=None, metavar="FILE",
                        help="a .jinja chat template to use instead of the default's (same vocabulary)")
    args = parser.parse_args(argv)
    turns = [int(x) for x in args.turns.split(",") if x.strip()]
    template = open(args.chat_template, encoding="utf-8").read() if args.chat_template else None
    print(table(measure(turns, args.rows, template)))


if __name__ == "__main__":
    main()
