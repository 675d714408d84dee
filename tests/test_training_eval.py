import numpy as np
import pytest
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
    res = evaluate(model, enc, data, 5, "fp32", labels=DEPARTMENTS, max_new_tokens=10, method="generate")
    alone = [generate_answers(model, enc, [d.prompt_ids], 10)[0] for d in data]
    assert res.predictions == alone
    assert res.accuracy == sum(exact_match(p, r.completion) for p, r in zip(alone, records)) / 12
    assert res.label_counts is not None and sum(res.label_counts.tp) == round(res.accuracy * 12)


def _prompt(text: str) -> tuple[dict, ...]:
    return ({"role": "system", "content": "Classify the text. Reply with its label."}, {"role": "user", "content": text})


LABELS = ("card_arrival", "card", "exchange_rate", "top_up_failed_by_bank_transfer")  # different token lengths


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_each_label_score_is_exactly_that_label_s_training_log_likelihood(tiny_peft, attention):
    """Scoring every label in one packed pass (4-D mask: each label block sees the prompt and itself) must
    give, per (record, label), the summed log-likelihood a full teacher-forced forward of prompt + label
    gives: the loss training minimises. Left padding of different prompt lengths must not change any score."""
    from fedtune.common.data import Example
    from fedtune.common.label_scoring import label_log_likelihoods, label_targets
    from fedtune.common.objective import per_sample_forward

    model, _, enc = tiny_peft
    model.base_model.model.set_attn_implementation(attention)
    assert model.config._attn_implementation == attention
    texts = ["my card has not come", "what rate do you use for euros today, and is there a fee on top?", "top up"]
    scores = label_log_likelihoods(model, enc, [enc.encode_prompt(_prompt(t)) for t in texts],
                                   label_targets(enc, LABELS), "fp32")
    assert scores.shape == (3, 4)
    for b, text in enumerate(texts):
        items = enc.encode_all([Example(_prompt(text), label) for label in LABELS])
        with torch.no_grad():
            full = per_sample_forward(model, enc.collate(items), "fp32").losses
        n = torch.tensor([len(e.target_ids) for e in items], dtype=torch.float32)
        torch.testing.assert_close(scores[b], -full * n, rtol=1e-4, atol=1e-4)


def test_label_scoring_predicts_the_likeliest_label_and_its_loss_is_the_reference_s(tiny_peft):
    from fedtune.common.data import Example
    from fedtune.common.label_scoring import label_log_likelihoods, label_targets

    model, _, enc = tiny_peft
    records = [Example(_prompt(f"message number {i}"), LABELS[i % 4], LABELS[i % 4]) for i in range(10)]
    data = enc.encode_all(records)
    scored = evaluate(model, enc, data, 4, "fp32", labels=LABELS, method="labels")
    generated = evaluate(model, enc, data, 4, "fp32", labels=LABELS, method="generate", max_new_tokens=6)
    brute = label_log_likelihoods(model, enc, [d.prompt_ids for d in data], label_targets(enc, LABELS), "fp32")
    assert scored.predictions == [LABELS[int(i)] for i in brute.argmax(1)]
    assert set(scored.predictions) <= set(LABELS)  # always a valid label, even from a random model
    assert abs(scored.loss - generated.loss) < 1e-4 and abs(scored.token_nll - generated.token_nll) < 1e-3
    assert scored.tokens == generated.tokens
    assert sum(scored.label_counts.tp) == round(scored.accuracy * 10)


def test_label_scoring_refuses_free_text_answers_and_auto_falls_back_to_generation(tiny_peft):
    from fedtune.common.data import Example

    model, _, enc = tiny_peft
    data = enc.encode_all([Example(_prompt("hello"), "a free-text answer")])
    with pytest.raises(ValueError, match="eval-method"):
        evaluate(model, enc, data, 4, "fp32", labels=LABELS, method="labels")
    assert evaluate(model, enc, data, 4, "fp32", labels=LABELS, method="auto", max_new_tokens=3).label_counts is None


def test_generation_budget_is_the_configured_one_whatever_the_references(tiny_peft, monkeypatch):
    """The number of generated tokens used to follow the longest held-out reference (+8): the answers
    then depended on the references. Now the same prompts give the same answers under any references."""
    import fedtune.common.evaluation as evaluation
    from fedtune.common.data import Example

    model, _, enc = tiny_peft
    budgets = []
    real = evaluation.generate_answers
    monkeypatch.setattr(evaluation, "generate_answers",
                        lambda m, e, prompts, n, *a: budgets.append(n) or real(m, e, prompts, n, *a))
    prompts = [_prompt(f"question {i}") for i in range(4)]
    short = evaluate(model, enc, enc.encode_all([Example(p, "x") for p in prompts]), 4, "fp32", max_new_tokens=9)
    long = evaluate(model, enc, enc.encode_all([Example(p, "a much longer reference answer " * 3) for p in prompts]),
                    4, "fp32", max_new_tokens=9)
    assert budgets == [9, 9] and short.predictions == long.predictions


def test_cosine_schedule_with_warmup_gives_the_planned_rate_each_round():
    from fedtune.node.lr_schedule import round_lr

    cos = TrainConfig(lr=0.01, lr_schedule="cosine")
    assert [round(round_lr(cos, 3, r), 6) for r in (1, 2, 3)] == [0.01, 0.0075, 0.0025]  # 0.5(1+cos(pi k/3))
    warm = TrainConfig(lr=0.01, lr_schedule="cosine", warmup_rounds=1)
    assert [round(round_lr(warm, 3, r), 6) for r in (1, 2, 3)] == [0.005, 0.01, 0.005]
    assert round_lr(TrainConfig(lr=0.01), 3, 3) == 0.01


def test_fedprox_pull_keeps_the_adapter_nearer_the_global_one(tiny_peft):
    """With μ > 0 the trained adapter ends closer to where it started (the global adapter) than with μ = 0,
    by the decoupled pull w <- w - lr·μ·(w - w_global) after every step."""
    import copy

    model, _, enc = tiny_peft
    data = enc.encode_all(generate_triage(24, seed=1))
    start = get_adapter_arrays(model)
    moved = {}
    for mu in (0.0, 20.0):
        m = copy.deepcopy(model)
        train_local(m, enc, data, TrainConfig(local_steps=4, batch_size=8, lr=0.02, proximal_mu=mu), "fp32", seed=0)
        end = get_adapter_arrays(m)
        moved[mu] = sum(float(np.sum((end[n] - start[n]) ** 2)) for n in start) ** 0.5
    assert 0 < moved[20.0] < 0.8 * moved[0.0]


def test_ffa_lora_trains_only_b_and_averaging_b_deltas_averages_the_adapters_exactly(tiny_cfg):
    """lora.freeze-a: A stays at its seeded start on every node, so the mean of the nodes' B times the shared A
    is exactly the mean of their B·A; with A and B both trained, mean(B)·mean(A) != mean(B·A)."""
    import dataclasses

    from fedtune.common.adapters import trainable_parameters, trained_names
    from fedtune.common.data import PromptEncoder
    from fedtune.common.model import add_lora, load_base_model, load_tokenizer

    enc = PromptEncoder(load_tokenizer(tiny_cfg.model.name), tiny_cfg.model.max_length)
    gap = {}
    for freeze in (True, False):
        lora = dataclasses.replace(tiny_cfg.lora, freeze_a=freeze)
        nodes = []
        for seed in (1, 2):
            model = add_lora(load_base_model(tiny_cfg.model), lora, seed=0)
            start = get_adapter_arrays(model)
            train_local(model, enc, enc.encode_all(generate_triage(16, seed=seed)),
                        TrainConfig(local_steps=3, batch_size=8, lr=0.05), "fp32", seed=seed)
            nodes.append(get_adapter_arrays(model))
            if freeze:
                assert all("lora_B" in n for n in trainable_parameters(model))
                assert trained_names(start, True) == [n for n in start if "lora_B" in n]
                assert all(np.array_equal(nodes[-1][n], start[n]) for n in start if "lora_A" in n)
        b_names = [n for n in nodes[0] if "lora_B" in n]
        mean = {n: (nodes[0][n] + nodes[1][n]) / 2 for n in nodes[0]}
        gap[freeze] = max(float(np.abs(mean[b] @ mean[b.replace("lora_B", "lora_A")] - sum(
            x[b] @ x[b.replace("lora_B", "lora_A")] for x in nodes) / 2).max()) for b in b_names)
    assert gap[True] < 1e-6 < 1e-3 < gap[False]


def test_auto_precision_uses_bf16_only_where_this_machine_computes_it_natively(monkeypatch):
    """'auto' (the default) must never pick emulated bf16: on an AVX2 CPU it ran matmuls ~100x slower."""
    from fedtune.common import model as model_module
    from fedtune.common.config import RunConfig

    assert RunConfig().model.precision == "auto"
    for native in (True, False):
        monkeypatch.setattr(model_module, "native_bf16", lambda device_type="cpu", native=native: native)
        with model_module.autocast("auto", "cpu"):
            assert torch.is_autocast_cpu_enabled() is native
        assert model_module.compute_precision("auto") == ("bf16" if native else "fp32")
    for explicit in ("bf16", "fp32"):  # an explicit choice is kept whatever the machine
        assert model_module.compute_precision(explicit) == explicit
    monkeypatch.undo()
    x = torch.randn(256, 256)  # the probe agrees with a direct measurement when the gap is wide
    bf16, fp32 = model_module._best_matmul_seconds(x.bfloat16()), model_module._best_matmul_seconds(x)
    if bf16 > 2 * fp32 or bf16 < 0.4 * fp32:
        assert model_module.native_bf16() is (bf16 < fp32)


def _carry_run(model, enc, data, start, steps_per_round, carry: bool, private: bool):
    """Train from ``start`` for rounds of ``steps_per_round`` full-batch steps; moments carried or fresh."""
    from fedtune.common.adapters import set_adapter_arrays
    from fedtune.node.privacy import DPPlan, DPStepper

    set_adapter_arrays(model, start)
    moments = None
    for steps in steps_per_round:
        cfg = TrainConfig(local_steps=steps, batch_size=len(data), lr=0.05)
        # σ = 0, q = 1, C far above any gradient: DP-SGD's update is the plain full-batch gradient
        stepper = DPStepper(model, len(data), cfg, DPPlan(0.0, 1.0, steps, 1e6), moments=moments) if private else None
        result = train_local(model, enc, data, cfg, "fp32", seed=0, stepper=stepper,
                             moments=None if private else moments)
        moments = result.moments if carry else None
    return get_adapter_arrays(model)


@pytest.mark.parametrize("private", [False, True], ids=["plain", "dp"])
def test_carried_moments_make_two_rounds_of_two_steps_one_adamw_run_of_four(tiny_peft, private):
    """Full batches give the same gradient whatever the order: with the moments carried, 2 + 2 steps are
    exactly 4 steps of one AdamW run; with a fresh AdamW each round they are not."""
    model, _, enc = tiny_peft
    data = enc.encode_all(generate_triage(8, seed=0))
    start = get_adapter_arrays(model)
    one_run = _carry_run(model, enc, data, start, [4], carry=True, private=private)
    carried = _carry_run(model, enc, data, start, [2, 2], carry=True, private=private)
    fresh = _carry_run(model, enc, data, start, [2, 2], carry=False, private=private)
    moved = max(np.abs(one_run[n] - start[n]).max() for n in start)
    assert moved > 0.05
    for n in start:
        np.testing.assert_allclose(carried[n], one_run[n], rtol=1e-5, atol=1e-6)
    assert max(np.abs(fresh[n] - one_run[n]).max() for n in start) > 0.1 * moved


def test_moments_of_another_adapter_shape_are_ignored_and_training_starts_fresh(tiny_peft):
    from fedtune.common.adapters import trainable_parameters
    from fedtune.node.optimizer_state import restore_moments

    model, _, _ = tiny_peft
    named = trainable_parameters(model)
    optimizer = torch.optim.AdamW(list(named.values()))
    bad = {}
    for name, p in named.items():
        bad[f"{name}/exp_avg"] = np.zeros((p.shape[0] + 1, *p.shape[1:]), np.float32)  # lora.r changed
        bad[f"{name}/exp_avg_sq"] = np.zeros(p.shape, np.float32)
        bad[f"{name}/step"] = np.ones(1)
    assert restore_moments(optimizer, named, bad) is False and not optimizer.state
    good = {k: (np.zeros(named[k.rsplit("/", 1)[0]].shape, np.float32) if not k.endswith("/step") else v)
            for k, v in bad.items()}
    assert restore_moments(optimizer, named, {**good, "other.lora_B/exp_avg": np.zeros(2)}) is False
    assert restore_moments(optimizer, named, good) is True and len(optimizer.state) == len(named)
