"""Fast-weight lifecycle: no effect at reset, fresh draws, never in the optimizer or a checkpoint."""

import torch
from safetensors.torch import load_file

from focusft.core.fast_weights import FastWeights
from focusft.core.models import adapted_layer_indices
from tiny import tiny_qwen2


def test_layer_rule_matches_reference():
    assert adapted_layer_indices(28, 0.35) == list(range(18, 28))
    assert adapted_layer_indices(4, 0.35) == [2, 3]
    assert adapted_layer_indices(4, 1.0) == [0, 1, 2, 3]


def test_zero_effect_after_reset_and_effect_after_change():
    model = tiny_qwen2()
    ids = torch.randint(1, 64, (2, 9))
    base = model(ids).logits
    fast = FastWeights(model, rank=4, alpha=8)
    fast.reset([1, 2])
    assert torch.equal(model(ids).logits, base)  # B = 0: exactly the base model
    fast.assign([t + 0.1 for t in fast.tensors()])
    changed = model(ids).logits
    assert not torch.allclose(changed, base)
    with fast.disabled():
        assert torch.equal(model(ids).logits, base)
    fast.strip()
    assert torch.equal(model(ids).logits, base)


def test_reset_draws_new_a_per_seed_and_kaiming_bound():
    model = tiny_qwen2()
    fast = FastWeights(model, rank=4, alpha=8)
    fast.reset([1, 2])
    a1 = [t.clone() for t in fast.tensors()[0::2]]
    fast.reset([3, 2])
    a2 = fast.tensors()[0::2]
    assert not torch.equal(a1[0][0], a2[0][0])  # new seed, new draw
    assert torch.equal(a1[0][1], a2[0][1])  # same seed, same draw, whatever the batch position
    for slot in fast.slots:
        bound = 1 / slot.module.in_features ** 0.5
        assert slot.a.abs().max() <= bound and slot.a.abs().max() > 0.5 * bound
        assert torch.count_nonzero(slot.b) == 0
    assert len(fast.slots) == 2 * 3  # top 35% of 4 layers = 2 layers x gate/up/down


def test_never_in_parameters_optimizer_or_checkpoint(tmp_path):
    model = tiny_qwen2()
    names_before = [n for n, _ in model.named_parameters()]
    fast = FastWeights(model, rank=4, alpha=8)
    fast.reset([0])
    assert [n for n, _ in model.named_parameters()] == names_before
    fast_ids = {id(t) for t in fast.tensors()}
    opt = torch.optim.AdamW(model.parameters())
    assert not any(id(p) in fast_ids for g in opt.param_groups for p in g["params"])
    model.save_pretrained(tmp_path)
    keys = set(load_file(tmp_path / "model.safetensors"))
    assert keys == set(model.state_dict()) - {"lm_head.weight"} or keys == set(model.state_dict())
    assert not any("fast" in k or "lora" in k for k in keys)
