import numpy as np
import torch

from fedtune.adapters import get_adapter_arrays
from fedtune.config import TrainConfig
from fedtune.data import generate_triage
from fedtune.evaluation import evaluate
from fedtune.training import shuffled_batches, train_local


def test_local_training_lowers_loss_and_changes_only_lora(tiny_peft):
    model, _, enc = tiny_peft
    data = enc.encode_all(generate_triage(32, seed=0))
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora_before = get_adapter_arrays(model)
    loss0 = evaluate(model, enc, data, 16, "fp32").loss
    result = train_local(model, enc, data, TrainConfig(local_steps=15, batch_size=8, lr=0.02), "fp32", seed=0)
    assert result.steps == 15 and result.samples == 120
    assert evaluate(model, enc, data, 16, "fp32").loss < loss0 - 0.5
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, base_before[n]), f"base weight {n} changed"
    assert any(not np.array_equal(a, lora_before[n]) for n, a in get_adapter_arrays(model).items())


def test_shuffled_batches_cover_each_epoch_once():
    it = shuffled_batches(10, 5, np.random.default_rng(0))
    epoch = np.concatenate([next(it), next(it)])
    assert sorted(epoch.tolist()) == list(range(10))
