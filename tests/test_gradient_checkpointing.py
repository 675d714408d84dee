"""``model.gradient-checkpointing``: the adapted layers recompute their activations in the backward pass,
and a DP-SGD step (Opacus's per-sample clipping) moves the adapter exactly as without it."""

import dataclasses

import numpy as np
import pytest
import torch

from fedtune.common.adapters import get_adapter_arrays, set_adapter_arrays
from fedtune.common.config import TrainConfig
from fedtune.common.data import PromptEncoder, generate_triage
from fedtune.common.model import add_lora, load_base_model, load_tokenizer
from fedtune.common.objective import per_sample_forward
from fedtune.node.privacy import DPPlan, DPStepper


def _model(tiny_cfg, top_layers: int, checkpointing: bool):
    model = add_lora(load_base_model(tiny_cfg.model), dataclasses.replace(tiny_cfg.lora, top_layers=top_layers),
                     seed=0, gradient_checkpointing=checkpointing)
    rnd = np.random.default_rng(0)  # B non-zero, so the adapter shapes the output and the gradients of A
    set_adapter_arrays(model, {n: (a + rnd.normal(0, 0.3, a.shape)).astype(np.float32)
                               for n, a in get_adapter_arrays(model).items()})
    return model


def _forwards_per_layer(model) -> list[int]:
    """How often each decoder layer's forward runs from now on (a checkpointed one runs again in backward)."""
    counts = []
    for i, layer in enumerate(model.get_base_model().model.layers):
        counts.append(0)
        layer.self_attn.register_forward_hook(lambda *_a, i=i: counts.__setitem__(i, counts[i] + 1))
    return counts


@pytest.mark.parametrize("top_layers", [1, 0], ids=["top-1-of-2 (frozen prefix cache)", "every layer"])
@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_a_dp_sgd_step_with_checkpointed_layers_clips_and_updates_as_without(tiny_cfg, top_layers, mode):
    """σ = 0 and a clip bound that bites: the step sees the same per-sample gradients; the adapted layers ran
    again in each backward pass (recomputed), a frozen layer below them once."""
    enc = PromptEncoder(load_tokenizer(tiny_cfg.model.name), tiny_cfg.model.max_length)
    batch = enc.collate(enc.encode_all(generate_triage(4, seed=1)))
    updated, runs = {}, {}
    for checkpointing in (False, True):
        model = _model(tiny_cfg, top_layers, checkpointing)
        start = get_adapter_arrays(model)
        stepper = DPStepper(model, 8, TrainConfig(batch_size=4, lr=0.05), DPPlan(0.0, 0.5, 1, 0.01), mode)
        model.train()
        runs[checkpointing] = _forwards_per_layer(model)
        stepper.step(per_sample_forward(model, batch, "fp32").losses * 100.0)
        stepper.close()
        updated[checkpointing] = get_adapter_arrays(model)
    assert any(not np.allclose(updated[True][n], start[n]) for n in start)  # the step moved the adapter
    for name in start:
        np.testing.assert_allclose(updated[True][name], updated[False][name], rtol=1e-4, atol=1e-7)
    assert runs[False] == [1, 1]
    again = 1 if mode == "hooks" else 2  # ghost clipping runs two backward passes: norms, then the clipped sum
    assert runs[True] == ([1, 1 + again] if top_layers == 1 else [1 + again, 1 + again])


def test_evaluation_is_not_recomputed_and_gives_the_same_losses(tiny_cfg):
    enc = PromptEncoder(load_tokenizer(tiny_cfg.model.name), tiny_cfg.model.max_length)
    batch = enc.collate(enc.encode_all(generate_triage(4, seed=1)))
    losses = {}
    for checkpointing in (False, True):
        model = _model(tiny_cfg, 0, checkpointing).eval()
        runs = _forwards_per_layer(model)
        with torch.no_grad():
            losses[checkpointing] = per_sample_forward(model, batch, "fp32").losses
        assert runs == [1, 1]
    torch.testing.assert_close(losses[True], losses[False])


def test_a_model_whose_layers_cannot_be_checkpointed_is_refused_with_the_setting_to_change(tiny_cfg):
    from fedtune.common.model import ModelError, checkpoint_adapted_layers

    model = _model(tiny_cfg, 0, False)
    model.get_base_model().model.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2)])
    with pytest.raises(ModelError, match="model.gradient-checkpointing = false"):
        checkpoint_adapted_layers(model, 0)
