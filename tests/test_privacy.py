"""Differential privacy: accounting, Poisson sampling, clipping, the node ledger and budget."""

import json
import os

import numpy as np
import pytest
import torch

from fedtune.common.config import ConfigError, RunConfig, TrainConfig
from fedtune.common.data import generate_triage
from fedtune.common.objective import per_sample_forward
from fedtune.node.privacy import DPPlan, DPStepper, LedgerError, PrivacyLedger, epsilon, plan_round, poisson_sample_rate
from fedtune.node.privacy.accounting import accountant_for
from fedtune.node.privacy.guard import node_budget
from fedtune.node.training import train_local


def test_accounting_reproduces_opacus_pinned_values():
    assert epsilon([(1.5, 0.04, 2250)], 1e-5, "rdp") == pytest.approx(7.32911117143, abs=1e-9)
    assert epsilon([(1.5, 0.04, 2250)], 1e-5, "prv") == pytest.approx(6.7774, abs=0.01)


def test_ledger_matches_a_fresh_opacus_accountant_across_rounds_and_restarts(tmp_path):
    plan = [(0.8, 0.05, 6), (0.8, 0.05, 6), (1.1, 0.04, 5)]  # 3 rounds, σ/q changed in the 3rd
    ledger = PrivacyLedger.open(tmp_path, "f" * 64, "rdp", 1e-4, 500)
    for seg in plan:
        ledger.record(seg, round=1)
    fresh = accountant_for("rdp")
    for sigma, q, steps in plan:
        for _ in range(steps):
            fresh.step(noise_multiplier=sigma, sample_rate=q)  # Opacus's own per-step accounting
    expected = fresh.get_epsilon(delta=1e-4)
    assert ledger.epsilon() == pytest.approx(expected, abs=1e-6)
    reopened = PrivacyLedger.open(tmp_path, "f" * 64, "rdp", 1e-4, 500)  # a restart
    assert reopened.history == ledger.history and reopened.epsilon() == pytest.approx(expected, abs=1e-6)
    reopened.record((1.1, 0.04, 5), round=4)
    for _ in range(5):
        fresh.step(noise_multiplier=1.1, sample_rate=0.04)
    assert PrivacyLedger.open(tmp_path, "f" * 64, "rdp", 1e-4, 500).epsilon() == pytest.approx(
        fresh.get_epsilon(delta=1e-4), abs=1e-6)


def test_ledger_is_keyed_by_dataset_and_refuses_changed_settings(tmp_path):
    a = PrivacyLedger.open(tmp_path, "a" * 64, "rdp", 1e-4, 100)
    a.record((1.0, 0.1, 3))
    assert PrivacyLedger.open(tmp_path, "b" * 64, "rdp", 1e-4, 100).history == []  # another dataset
    with pytest.raises(LedgerError, match="accountant=prv"):
        PrivacyLedger.open(tmp_path, "a" * 64, "prv", 1e-4, 100)


@pytest.mark.parametrize("crash_in", ["write", "fsync", "replace"])
def test_ledger_survives_a_crash_in_the_middle_of_a_write(tmp_path, monkeypatch, crash_in):
    ledger = PrivacyLedger.open(tmp_path, "c" * 64, "rdp", 1e-4, 100)
    ledger.record((1.0, 0.1, 3))
    before = ledger.path.read_bytes()

    class Crash(Exception):
        pass

    def boom(*a, **k):
        raise Crash

    if crash_in == "write":  # half the bytes reach the temp file, then the process dies
        real_fdopen = os.fdopen

        def half_writer(fd, *a, **k):
            fh = real_fdopen(fd, *a, **k)
            real_write = fh.write
            fh.write = lambda text: (real_write(text[: len(text) // 2]), boom())
            return fh

        monkeypatch.setattr("fedtune.common.files.os.fdopen", half_writer)
    elif crash_in == "fsync":
        monkeypatch.setattr("fedtune.common.files.os.fsync", boom)
    else:
        monkeypatch.setattr("fedtune.common.files.os.replace", boom)
    with pytest.raises(Crash):
        ledger.record((1.0, 0.1, 3))
    monkeypatch.undo()
    assert ledger.path.read_bytes() == before  # old ledger intact: nothing lost, nothing corrupt
    assert [p.name for p in tmp_path.iterdir()] == [ledger.path.name]  # no temp litter
    reopened = PrivacyLedger.open(tmp_path, "c" * 64, "rdp", 1e-4, 100)
    assert reopened.history == [(1.0, 0.1, 3)]


def test_unreadable_ledger_is_a_clear_error_not_a_reset(tmp_path):
    ledger = PrivacyLedger.open(tmp_path, "d" * 64, "rdp", 1e-4, 100)
    ledger.record((1.0, 0.1, 3))
    ledger.path.write_text("{ truncated")
    with pytest.raises(LedgerError, match="restore it from backup"):
        PrivacyLedger.open(tmp_path, "d" * 64, "rdp", 1e-4, 100)


def test_batches_are_poisson_sampled(tiny_peft):
    model, _, _ = tiny_peft
    n, b = 200, 10
    q = poisson_sample_rate(n, b)
    stepper = DPStepper(model, n, TrainConfig(batch_size=b), DPPlan(1.0, q, 1, 1.0))
    it = stepper.batches()
    draws = [next(it) for _ in range(2000)]
    stepper.close()
    sizes = np.array([len(d) for d in draws])
    # Binomial(n, q): mean nq, variance nq(1-q); fixed-size (shuffled) batches would have variance 0.
    assert sizes.mean() == pytest.approx(n * q, rel=0.05)
    assert sizes.var() == pytest.approx(n * q * (1 - q), rel=0.15)
    assert (sizes == 0).sum() < 5 and len(set(sizes)) > 8
    counts = np.bincount(np.concatenate(draws), minlength=n)
    assert counts.mean() / len(draws) == pytest.approx(q, rel=0.05)  # each record in ~q of the batches


@pytest.mark.parametrize("mode, precision", [("hooks", "fp32"), ("hooks", "bf16"), ("ghost", "fp32")])
def test_per_sample_gradient_norm_never_exceeds_max_grad_norm(tiny_peft, mode, precision):
    """Real per-sample gradients of a tiny model, one sample per step, σ = 0: the clipped gradient
    DP-SGD adds to the sum is the sample's own, and its norm must be ≤ C (and = C when clipping bites)."""
    model, _, enc = tiny_peft
    data = enc.encode_all(generate_triage(6, seed=0))
    C = 0.01
    stepper = DPStepper(model, len(data), TrainConfig(batch_size=1, lr=1e-9), DPPlan(0.0, 1 / len(data), 1, C), mode)
    captured = []
    stepper.optimizer.original_optimizer.step = lambda *a, **k: captured.append(
        torch.cat([p.grad.flatten() for p in stepper.params]) * stepper.optimizer.expected_batch_size)
    model.train()
    for item in data:
        losses = per_sample_forward(model, enc.collate([item]), precision).losses * 100.0  # big grads: clip bites
        stepper.step(losses)
    stepper.close()
    norms = torch.stack([g.norm() for g in captured])
    assert len(norms) == len(data)
    assert (norms <= C * (1 + 1e-5)).all(), norms
    assert (norms >= C * (1 - 1e-2)).all(), norms


def test_ghost_clipping_with_bf16_is_refused():
    with pytest.raises(ConfigError, match="bf16 norms can exceed the clipping bound"):
        RunConfig.from_flat({"privacy.clipping": "ghost", "model.precision": "bf16"})


def test_dp_stepper_leaves_no_hooks_behind(tiny_peft):
    model, _, enc = tiny_peft
    data = enc.encode_all(generate_triage(20, seed=0))
    cfg = TrainConfig(local_steps=2, batch_size=4)
    train_local(model, enc, data, cfg, "fp32", 0, DPStepper(model, len(data), cfg, DPPlan(1.0, 0.2, 2, 1.0)))
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    assert all(not hasattr(p, "grad_sample") for p in model.parameters())


def test_training_through_empty_poisson_batches(tiny_peft):
    """q = 1/40 on 40 records: about a third of the batches are empty. They must come out as empty
    index arrays (never placeholder indices) and training must go through them."""
    model, _, enc = tiny_peft
    data = enc.encode_all(generate_triage(40, seed=0))
    cfg = TrainConfig(local_steps=30, batch_size=1)
    stepper = DPStepper(model, len(data), cfg, DPPlan(1.0, 1 / 40, 30, 1.0))
    it = stepper.batches()
    draws = [next(it) for _ in range(300)]
    stepper.close()
    assert sum(len(d) == 0 for d in draws) > 50
    assert all(d.dtype == np.int64 and d.ndim == 1 and (len(d) == 0 or d.max() < 40) for d in draws)
    stepper = DPStepper(model, len(data), cfg, DPPlan(1.0, 1 / 40, 30, 1.0))
    empty_steps = []
    real_step_empty = stepper.step_empty
    stepper.step_empty = lambda: (empty_steps.append(1), real_step_empty())
    result = train_local(model, enc, data, cfg, "fp32", 0, stepper)
    assert result.steps == 30 and len(empty_steps) > 0  # noised steps with no records at all


def test_empty_poisson_batch_still_adds_noise(tiny_peft):
    model, _, _ = tiny_peft
    stepper = DPStepper(model, 10, TrainConfig(batch_size=2, lr=0.1), DPPlan(1.0, 0.2, 1, 1.0))
    before = [p.detach().clone() for p in stepper.params]
    stepper.step_empty()
    stepper.close()
    assert any(not torch.equal(a, p) for a, p in zip(before, stepper.params))


def _cfg(**flat):
    return RunConfig.from_flat({"output.dir": "/tmp/unused", **flat})


def test_delta_defaults_below_one_over_n_and_larger_is_refused(tmp_path):
    node = {"data-path": "x.jsonl", "state-dir": str(tmp_path), "max-epsilon": 8.0}
    rp = plan_round(_cfg(), node, "n", "e" * 64, 400)
    assert rp.ledger.delta == pytest.approx(0.1 / 400) and rp.ledger.delta < 1 / 400
    with pytest.raises(ConfigError, match="not below 1/N"):
        plan_round(_cfg(**{"privacy.delta": 1 / 400}), node, "n", "e" * 64, 400)


def test_target_epsilon_sets_sigma_for_the_planned_rounds(tmp_path):
    node = {"data-path": "x.jsonl", "state-dir": str(tmp_path), "max-epsilon": 100.0}
    cfg = _cfg(**{"privacy.target-epsilon": 4.0, "federation.rounds": 5, "train.local-steps": 4})
    rp = plan_round(cfg, node, "n", "e" * 64, 400)
    planned = [rp.plan.segment] * 5
    assert epsilon(planned, rp.ledger.delta) == pytest.approx(4.0, rel=0.02)
    fixed = plan_round(_cfg(**{"privacy.noise-multiplier": 2.5}), node, "n", "e" * 64, 400)
    assert fixed.plan.noise_multiplier == 2.5


def test_budget_refusal_and_server_config_cannot_raise_a_node_budget(tmp_path):
    deployed = {"data-path": "x.jsonl", "state-dir": str(tmp_path), "max-epsilon": 1.0}
    greedy_server = _cfg(**{"privacy.simulated-max-epsilon": 1000.0, "privacy.target-epsilon": 50.0})
    assert node_budget(greedy_server, deployed) == 1.0
    assert node_budget(greedy_server, {"data-path": "x.jsonl", "state-dir": "s"}) == 8.0  # node default, not the server's
    rp = plan_round(greedy_server, deployed, "n", "e" * 64, 400)
    assert rp.epsilon_after > 1.0 and not rp.allowed
    simulated = {"partition-id": 0, "num-partitions": 2}
    assert node_budget(greedy_server, simulated) == 1000.0  # simulated nodes have no operator of their own


def test_simulated_node_state_is_absolute_and_per_run(tmp_path, monkeypatch):
    from fedtune.node.privacy.guard import node_state_dir

    sim = {"partition-id": 1, "num-partitions": 2}
    out = RunConfig.from_flat({"output.dir": str(tmp_path / "run")})
    assert node_state_dir(out, sim, "hospital-1") == tmp_path / "run" / "node-state" / "hospital-1"
    monkeypatch.setenv("FEDTUNE_CACHE_DIR", str(tmp_path / "cache"))
    bare = RunConfig()  # `flwr run .` without output.dir: keyed by run id, never cwd-relative
    a, b = node_state_dir(bare, sim, "hospital-1", run_id=7), node_state_dir(bare, sim, "hospital-1", run_id=8)
    assert a.is_absolute() and a != b and a.parent.name == "run-7"
    with pytest.raises(ConfigError, match="no 'state-dir'"):
        node_state_dir(bare, {"data-path": "x.jsonl"}, "bank")
    assert node_state_dir(bare, {"data-path": "x.jsonl", "state-dir": str(tmp_path)}, "bank") == tmp_path
