"""The frozen-prefix cache (LoRA on the top layers only): the layers below run once per record, and
every logit and per-sample gradient is what the model's own full forward gives."""

import dataclasses

import numpy as np
import pytest
import torch

from fedtune.common import frozen_prefix
from fedtune.common.adapters import get_adapter_arrays, set_adapter_arrays
from fedtune.common.data import PromptEncoder, generate_triage
from fedtune.common.label_scoring import label_scores, label_targets
from fedtune.common.model import add_lora, load_base_model, load_tokenizer
from fedtune.common.objective import per_sample_forward

LABELS = ["cardiology", "neurology", "orthopedics", "dermatology", "gastroenterology", "pulmonology"]


@pytest.fixture
def top1(tiny_cfg):
    """The tiny 2-layer model with LoRA on layer 1 only, B non-zero (so the adapter changes the output)."""
    model = add_lora(load_base_model(tiny_cfg.model), dataclasses.replace(tiny_cfg.lora, top_layers=1), seed=0)
    rnd = np.random.default_rng(0)
    set_adapter_arrays(model, {n: (a + rnd.normal(0, 0.3, a.shape)).astype(np.float32)
                               for n, a in get_adapter_arrays(model).items()})
    enc = PromptEncoder(load_tokenizer(tiny_cfg.model.name), tiny_cfg.model.max_length)
    return model, enc, enc.encode_all(generate_triage(6, seed=1))


def _full_forward(model):
    """The same model with its cache set aside: every call runs all layers."""
    cache = frozen_prefix.of(model)
    delattr(model, frozen_prefix.ATTRIBUTE)
    return cache


def _lora_grads(model) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


@pytest.mark.parametrize("objective", ["tokens", "labels"])
def test_cached_forward_gives_the_full_forwards_losses_and_gradients(top1, objective):
    model, enc, data = top1
    targets = label_targets(enc, LABELS)
    batch = enc.collate(data)

    def losses():
        if objective == "tokens":
            return per_sample_forward(model, batch, "fp32").losses
        return -torch.log_softmax(label_scores(model, enc, [e.prompt_ids for e in data], targets), 1)[:, 0]

    assert frozen_prefix.of(model) is not None
    model.zero_grad()
    first = losses()
    first.sum().backward()
    cached_grads = _lora_grads(model)
    again = losses()  # every row now comes from the cache
    cache = _full_forward(model)
    assert cache.misses == len(data) and cache.hits == len(data)
    model.zero_grad()
    full = losses()
    full.sum().backward()
    torch.testing.assert_close(first, full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(again, full, rtol=1e-5, atol=1e-6)
    full_grads = _lora_grads(model)
    assert cached_grads.keys() == full_grads.keys() and cached_grads
    for name in full_grads:
        torch.testing.assert_close(cached_grads[name], full_grads[name], rtol=1e-4, atol=1e-6)


def test_a_record_padded_differently_in_another_batch_hits_the_same_cached_row(top1):
    model, enc, data = top1
    short = min(data, key=lambda e: len(e.prompt_ids))
    long = max(data, key=lambda e: len(e.prompt_ids))
    alone = per_sample_forward(model, enc.collate([short]), "fp32").losses
    padded = per_sample_forward(model, enc.collate([short, long]), "fp32").losses  # short is left-padded here
    cache = frozen_prefix.of(model)
    assert cache.hits == 1 and cache.misses == 2
    torch.testing.assert_close(padded[0], alone[0], rtol=1e-5, atol=1e-6)


def test_the_cache_keeps_to_its_memory_bound_and_stays_exact(top1):
    model, enc, data = top1
    batch = enc.collate(data[:2])
    bound = frozen_prefix.FrozenPrefix(model.get_base_model(), 1, max_bytes=1)  # room for no more than a batch
    setattr(model, frozen_prefix.ATTRIBUTE, bound)
    first = per_sample_forward(model, batch, "fp32").losses
    other = per_sample_forward(model, enc.collate(data[2:4]), "fp32").losses  # evicts the first batch's rows
    again = per_sample_forward(model, batch, "fp32").losses
    assert len(bound._rows) == 2 and bound.misses == 6
    _full_forward(model)
    torch.testing.assert_close(again, first)
    torch.testing.assert_close(other, per_sample_forward(model, enc.collate(data[2:4]), "fp32").losses,
                               rtol=1e-5, atol=1e-6)


def test_no_cache_when_every_layer_is_adapted(tiny_cfg):
    model = add_lora(load_base_model(tiny_cfg.model), dataclasses.replace(tiny_cfg.lora, top_layers=0), seed=0)
    assert frozen_prefix.of(model) is None


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_a_dp_sgd_step_through_the_cache_clips_and_updates_as_the_full_forward_does(top1, mode):
    """σ = 0, a clip bound that bites: Opacus's per-sample clipping sees the same per-sample gradients."""
    from fedtune.common.config import TrainConfig
    from fedtune.node.privacy import DPPlan, DPStepper

    model, enc, data = top1
    start = get_adapter_arrays(model)
    updated = {}
    for cached in (True, False):
        if not cached:
            _full_forward(model)
        set_adapter_arrays(model, start)
        stepper = DPStepper(model, len(data), TrainConfig(batch_size=4, lr=0.05), DPPlan(0.0, 0.5, 1, 0.01), mode)
        model.train()
        stepper.step(per_sample_forward(model, enc.collate(data[:4]), "fp32").losses * 100.0)
        stepper.close()
        updated[cached] = get_adapter_arrays(model)
    assert any(not np.allclose(updated[True][n], start[n]) for n in start)  # the step moved the adapter
    for name in start:
        np.testing.assert_allclose(updated[True][name], updated[False][name], rtol=1e-4, atol=1e-7)


def test_states_made_in_one_precision_are_not_reused_in_another(top1):
    """bf16 autocast computes other states than fp32: a row cached in one is computed afresh in the other."""
    model, enc, data = top1
    batch = enc.collate(data[:2])
    per_sample_forward(model, batch, "fp32")
    per_sample_forward(model, batch, "bf16")
    cache = frozen_prefix.of(model)
    assert cache.misses == 4 and cache.hits == 0
    per_sample_forward(model, batch, "bf16")
    assert cache.hits == 2
