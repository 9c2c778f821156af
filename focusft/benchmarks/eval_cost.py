"""Cost of likelihood scoring against greedy generation, per row, measured in one run.

``python -m focusft.benchmarks.eval_cost --model DIR --lengths 1k,2k --rows 6`` scores the same
BABILong rows (`focusft eval`'s test rows, qa1-qa5 in turn) both ways, row by row, alternating
which goes first, under the causal mask, and prints the median seconds per row of each and
their ratio per length. Generation runs to the task's ``max_new_tokens`` or the first stop token;
likelihood scoring is one prefill plus one batched pass over the candidates
(`focusft.evaluation.loglik`).
"""

from __future__ import annotations

import argparse
import statistics
import time


def time_row(model, tokenizer, row: dict, stops: list[int],
             generate_first: bool = False) -> tuple[float, float]:
    """(seconds of likelihood scoring, seconds of greedy generation) of one row."""
    from focusft.evaluation.inference import greedy_generate
    from focusft.evaluation.loglik import candidate_logprobs, continuation_ids
    from focusft.evaluation.choices import row_choices
    from focusft.evaluation.runner import prompt_text

    text = prompt_text(tokenizer, row)
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
    choices, _ = row_choices(row)
    candidates = [continuation_ids(tokenizer, text, c) for c in choices]
    pad = tokenizer.pad_token_id or 0

    def loglik():
        candidate_logprobs(model, prompt, candidates, "causal", pad_id=pad)

    def generate():
        greedy_generate(model, [prompt], row["max_new_tokens"], pad, stops)

    seconds = {}
    for name, run in ([("generate", generate), ("loglik", loglik)] if generate_first
                      else [("loglik", loglik), ("generate", generate)]):
        start = time.perf_counter()
        run()
        seconds[name] = time.perf_counter() - start
    return seconds["loglik"], seconds["generate"]


def measure(model_path: str, lengths: list[str], rows: int) -> dict:
    """{length: {"loglik": median s, "generate": median s, "ratio": loglik / generate}}."""
    from focusft.evaluation.chat import make_chat_rows
    from focusft.evaluation.runner import load_checkpoint, stop_token_ids

    model, tokenizer = load_checkpoint(model_path)
    tasks = ["qa1", "qa2", "qa3", "qa4", "qa5"]
    out = {}
    for length in lengths:
        data = make_chat_rows("babilong", tasks, [length], -(-rows // 5), 0, "test", tokenizer,
                              "procedural", few_shot=False)[:rows]
        times = []
        time_row(model, tokenizer, data[0], stop_token_ids(tokenizer))  # warm-up
        for i, row in enumerate(data):
            times.append(time_row(model, tokenizer, row, stop_token_ids(tokenizer), i % 2 == 1))
        ll, gen = statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)
        out[length] = {"loglik": ll, "generate": gen, "ratio": ll / gen, "rows": len(times)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--lengths", default="1k,2k")
    p.add_argument("--rows", type=int, default=6, help="rows per length (tasks qa1-qa5 in turn)")
    args = p.parse_args(argv)
    result = measure(args.model, args.lengths.split(","), args.rows)
    print("| length | rows | loglik s / row (median) | generate s / row (median) | loglik / generate |")
    print("|---|---|---|---|---|")
    for length, r in result.items():
        print(f"| {length} | {r['rows']} | {r['loglik']:.2f} | {r['generate']:.2f} | {r['ratio']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
