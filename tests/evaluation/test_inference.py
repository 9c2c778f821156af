"""Cached greedy decoding == full forwards under the same mask, for both prefill modes."""

import pytest
import torch

from focusft.evaluation.inference import greedy_generate
from focusft.core.masks import AttentionLayout
from tiny import tiny_qwen2


def full_forward_greedy(model, prompt, n_new, mode, prompt_mask=None):
    """No cache: re-run the whole sequence each step under the explicit layout."""
    seq = list(prompt)
    pm = list(prompt_mask or [0] * len(prompt))
    for _ in range(n_new):
        loss_mask = torch.tensor([pm + [1] * (len(seq) - len(prompt))])
        if mode == "prefix":
            layout = AttentionLayout.glm(loss_mask, [len(seq)])
        else:
            layout = AttentionLayout.causal([len(seq)], len(seq))
        logits = model(input_ids=torch.tensor([seq]), layout=layout).logits
        seq.append(int(logits[0, -1].argmax()))
    return seq[len(prompt):]


@pytest.mark.parametrize("mode", ["causal", "prefix"])
def test_cached_decoding_equals_full_forward(mode):
    model = tiny_qwen2(seed=1).eval()
    model.set_attn_implementation("focusft")
    prompts = [list(range(5, 17)), list(range(30, 37)), [9, 8, 7, 6, 5, 4, 3, 2, 1, 11, 12, 13, 14, 15]]
    got = greedy_generate(model, prompts, max_new_tokens=6, pad_id=0, mode=mode)
    for prompt, out in zip(prompts, got):
        assert out == full_forward_greedy(model, prompt, 6, mode)


def test_prefix_mode_with_an_earlier_assistant_turn_and_stop_token():
    model = tiny_qwen2(seed=2).eval()
    model.set_attn_implementation("focusft")
    prompt = list(range(3, 15))
    pmask = [0] * 5 + [1] * 3 + [0] * 4  # an earlier response inside the prompt
    want = full_forward_greedy(model, prompt, 5, "prefix", pmask)
    got = greedy_generate(model, [prompt], 5, pad_id=0, mode="prefix", prompt_loss_masks=[pmask])[0]
    assert got == want
    stopped = greedy_generate(model, [prompt], 5, pad_id=0, mode="prefix",
                              prompt_loss_masks=[pmask], stop_ids=[want[2]])[0]
    assert stopped == want[: want.index(want[2])]


def test_prefix_and_causal_prefill_differ():
    model = tiny_qwen2(seed=3).eval()
    model.set_attn_implementation("focusft")
    prompt = torch.tensor([list(range(4, 20))])
    causal = model(prompt, layout=AttentionLayout.causal([16], 16)).logits
    prefix = model(prompt, layout=AttentionLayout.glm(torch.zeros(1, 16), [16])).logits
    assert not torch.allclose(causal[0, :-1], prefix[0, :-1])
