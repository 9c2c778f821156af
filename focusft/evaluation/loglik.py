"""Likelihood scoring of closed answer sets, lm-evaluation-harness's ``multiple_choice`` way.

For a prompt and candidate continuations c_1..c_C (`focusft.evaluation.choices`), each
candidate's score is the summed log-probability of its tokens after the prompt:

    tokens(c)   = encode(prompt + c)[len(encode(prompt)):]     (lm-eval's context/continuation
                                                                split: merges at the seam stay
                                                                on the continuation's side)
    logp(c)     = sum_t log p(c_t | prompt, c_<t)
    acc         = [argmax_c logp(c) == gold]
    acc_norm    = [argmax_c logp(c) / len(c in characters) == gold]
    gold NLL    = -logp(gold) / len(tokens(gold))              (nats per token)
    rank        = 1 + the number of candidates scored strictly above gold

Cost: one prefill of the prompt under the chosen inference mask (``causal``, or ``prefix``: the
prompt under the training mask, as `focusft.evaluation.inference` prefills it), then all
candidates at once from its KV cache: the cache is repeated once per candidate and the
candidates, right-padded, run as one batch whose tokens attend causally to the whole prompt and
to their own earlier tokens - exactly a response block after the prompt in training's layout.
The first candidate token is scored from the prefill's last logit. Tested equal to one full
forward of prompt + candidate under the same layout (tests/evaluation/test_loglik.py).
"""

from __future__ import annotations

from typing import Sequence

import torch

from focusft.core import attention
from focusft.evaluation.inference import _cache, prompt_layout


@torch.no_grad()
def candidate_logprobs(model, prompt: Sequence[int], candidates: Sequence[Sequence[int]],
                       mode: str = "causal", prompt_loss_mask: Sequence[int] | None = None,
                       pad_id: int = 0) -> list[list[float]]:
    """Per-token log-probabilities of each candidate continuation of one token-id prompt."""
    attention.use_focusft_attention(model)
    device = next(model.parameters()).device
    n, width = len(prompt), max(len(c) for c in candidates)
    ids = torch.tensor([list(prompt)], device=device)
    layout = prompt_layout([list(prompt_loss_mask or [0] * n)], n, mode)
    positions = torch.arange(n, device=device)[None]
    out = model(input_ids=ids, position_ids=positions, layout=layout, use_cache=True,
                logits_to_keep=1)
    first = torch.log_softmax(out.logits[0, -1].float(), -1)
    if width == 1:
        return [[first[c[0]].item()] for c in candidates]
    cache = _cache(out)
    cache.batch_repeat_interleave(len(candidates))
    cand = torch.full((len(candidates), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros(len(candidates), n + width, dtype=torch.long, device=device)
    mask[:, :n] = 1
    for i, c in enumerate(candidates):
        cand[i, :len(c)] = torch.tensor(list(c), device=device)
        mask[i, n:n + len(c)] = 1
    out = model(input_ids=cand, attention_mask=mask, position_ids=positions[:, -1:] + 1
                + torch.arange(width, device=device)[None], cache=cache, use_cache=True)
    rest = torch.log_softmax(out.logits[:, :-1].float(), -1)
    scores = []
    for i, c in enumerate(candidates):
        later = rest[i, torch.arange(len(c) - 1), torch.tensor(list(c[1:]), dtype=torch.long)]
        scores.append([first[c[0]].item(), *later.tolist()])
    return scores


def continuation_ids(tokenizer, prompt_text: str, continuation: str) -> list[int]:
    """The continuation's tokens, split off the whole as lm-eval splits them."""
    whole = tokenizer(prompt_text + continuation, add_special_tokens=False)["input_ids"]
    head = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    return whole[len(head):]


def choice_record(logprobs: list[list[float]], choices: list[str], gold: int) -> dict:
    """acc, acc_norm, gold NLL, rank and every candidate's sum (see the module docstring).

    >>> r = choice_record([[-1.0, -1.0], [-0.5], [-3.0]], ["aa", "b", "cccc"], gold=1)
    >>> r["acc"], r["acc_norm"], r["rank"], r["gold_nll"]
    (1.0, 1.0, 1, 0.5)
    >>> choice_record([[-1.0, -1.0], [-2.5], [-3.0]], ["aa", "b", "cccc"], gold=2)["acc_norm"]
    1.0
    """
    sums = [sum(lp) for lp in logprobs]
    norm = [s / max(1, len(c)) for s, c in zip(sums, choices)]
    best = max(range(len(sums)), key=sums.__getitem__)
    best_norm = max(range(len(norm)), key=norm.__getitem__)
    return {"acc": float(best == gold), "acc_norm": float(best_norm == gold),
            "gold_logprob": sums[gold], "gold_tokens": len(logprobs[gold]),
            "gold_nll": -sums[gold] / len(logprobs[gold]),
            "rank": 1 + sum(s > sums[gold] for s in sums), "choice_logprobs": sums,
            "prediction": choices[best]}


def score_rows(model, tokenizer, rows: list[dict], prompts: list[str], mode: str,
               prompt_masks=None, progress: str = "") -> list[dict]:
    """One record per row: `choice_record` of its closed answer set (`choices.row_choices`)
    under inference mask ``mode``; ``prompt_masks[i]`` marks row i's assistant prompt tokens
    (the ``prefix`` mask keeps them causal)."""
    from tqdm.auto import tqdm

    from focusft.evaluation.choices import row_choices

    records = []
    for i, (row, text) in enumerate(tqdm(list(zip(rows, prompts)), desc=progress, leave=False)):
        choices, gold = row_choices(row)
        prompt = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        candidates = [continuation_ids(tokenizer, text, c) for c in choices]
        logprobs = candidate_logprobs(model, prompt, candidates, mode,
                                      prompt_masks[i] if prompt_masks else None,
                                      tokenizer.pad_token_id or 0)
        records.append(choice_record(logprobs, choices, gold))
    return records
