import numpy as np
import torch

from fedtune.common.adapters import get_adapter_arrays
from fedtune.common.config import TrainConfig
from fedtune.common.data import DEPARTMENTS, generate_triage
from fedtune.common.evaluation import evaluate
from fedtune.node.training import shuffled_batches, train_local


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


def test_evaluation_answers_equal_one_by_one_greedy_generation_and_are_scored(tiny_peft):
    """Batched, left-padded generation must give each record what generating its prompt alone gives
    (the skip of greedy-exact records is exercised on SmolLM2 in test_smollm2.py)."""
    from fedtune.common.evaluation import generate_answers
    from fedtune.common.metrics import exact_match

    model, _, enc = tiny_peft
    records = generate_triage(12, seed=3)
    data = enc.encode_all(records)
    train_local(model, enc, data[:6], TrainConfig(local_steps=20, batch_size=6, lr=0.05), "fp32", seed=0)
    res = evaluate(model, enc, data, 5, "fp32", labels=DEPARTMENTS, max_new_tokens=10)
    alone = [generate_answers(model, enc, [d.prompt_ids], 10)[0] for d in data]
    assert res.predictions == alone
    assert res.accuracy == sum(exact_match(p, r.completion) for p, r in zip(alone, records)) / 12
    assert res.label_counts is not None and sum(res.label_counts.tp) == round(res.accuracy * 12)
