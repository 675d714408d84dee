"""The privacy audit: the one-run bound against hand-computed binomial tails and its false-alarm
rate, exposure, canaries, and (tiny model, 2 simulated nodes) an audit that sees leakage with DP off and
stays within the reported ε with DP on."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fedtune.lab.audit.bound import (Guesses, audit_bound, candidate_guesses, correct_guesses, epsilon_lower_bound,
                                     p_value)
from fedtune.lab.audit.exposure import chance_exposure, exposures, summarize


# ---- the bound: hand-computed binomial tails ---------------------------------------------------

def test_p_value_at_eps_0_is_the_fair_coin_tail():
    assert p_value(10, 10, 10, 0.0, 0.0) == pytest.approx(1 / 1024)
    assert p_value(10, 10, 9, 0.0, 0.0) == pytest.approx(11 / 1024)  # C(10,9) + C(10,10)


def test_p_value_is_the_binomial_tail_at_e_eps_over_1_plus_e_eps():
    eps = math.log(3)  # q = 3/4
    assert p_value(4, 4, 4, eps, 0.0) == pytest.approx(0.75 ** 4)
    assert p_value(4, 4, 3, eps, 0.0) == pytest.approx(4 * 0.75 ** 3 * 0.25 + 0.75 ** 4)


def test_p_value_delta_term_matches_the_hand_computed_alpha():
    # W ~ Bin(4, 3/4): P[W>=4] = .31640625, P[W>=3] = .73828125, P[W>=2] = .94921875, P[W>=1] = .99609375
    # alpha = max(.421875/1, .6328125/2, .6796875/3, .68359375/4) = .421875; p = beta + alpha * delta * 2m
    assert p_value(10, 4, 4, math.log(3), 0.01) == pytest.approx(0.31640625 + 0.421875 * 0.01 * 20)


def test_epsilon_lower_bound_solves_q_to_the_r_equals_significance():
    # all 10 guesses right, delta = 0: p(eps) = q^10, refuted while q^10 <= 0.05
    q = 0.05 ** 0.1
    assert epsilon_lower_bound(10, 10, 10, 0.0, 0.05) == pytest.approx(math.log(q / (1 - q)), abs=1e-5)


def test_a_delta_weakens_the_bound_and_chance_level_guessing_refutes_nothing():
    assert epsilon_lower_bound(1000, 100, 95, 1e-4, 0.05) < epsilon_lower_bound(1000, 100, 95, 0.0, 0.05)
    assert epsilon_lower_bound(1000, 100, 50, 0.0, 0.05) == 0.0
    assert epsilon_lower_bound(1000, 0, 0, 0.0, 0.05) == 0.0


def test_a_large_delta_leaves_the_audit_blind_and_the_report_says_so():
    from fedtune.lab.audit.bound import AuditBound, can_refute
    from fedtune.lab.audit.exposure import Exposure
    from fedtune.lab.audit.report import WEAK, AuditedRun, verdict

    assert can_refute(200, 1e-5) and not can_refute(200, 3e-3)
    # at 3e-4 (~ fedtune's default 0.1/N for a quickstart node) even 40 right out of 40 refute nothing
    assert epsilon_lower_bound(200, 40, 40, 3e-4, 0.05 / 14) == 0 < epsilon_lower_bound(200, 40, 40, 1e-5, 0.05 / 14)
    bound = AuditBound(0.0, 0.95, 3e-3, 200, Guesses(2, 0), 2, 14)
    blind = AuditedRun("DP off", "", 1.0, None, 3e-3, None, bound, Exposure(5, 6, 1.4, 6.6, 101), [])
    outcome, why = verdict([blind])
    assert outcome == WEAK and "privacy.delta" in why


def test_guesses_take_the_highest_and_lowest_scores():
    scores = [0.9, 0.1, 0.5, 0.8, 0.2]
    inserted = [True, False, False, False, True]
    assert correct_guesses(scores, inserted, Guesses(2, 0)) == 1  # 0.9 (in), 0.8 (out)
    assert correct_guesses(scores, inserted, Guesses(1, 2)) == 2  # 0.9 (in); 0.1 (out), 0.2 (in)


def test_candidate_guess_counts_are_fixed_before_the_scores_and_one_given_count_is_used_alone():
    assert candidate_guesses(100) == candidate_guesses(100)  # a function of m only
    assert candidate_guesses(100, fixed=10) == [Guesses(10, 10)]
    with pytest.raises(ValueError, match="--guesses"):
        candidate_guesses(10, fixed=6)


def _randomized_response(rng, m: int, eps: float):
    """An exactly eps-DP audit game: each score says the truth with probability e^eps/(1+e^eps)."""
    inserted = rng.random(m) < 0.5
    truthful = rng.random(m) < 1 / (1 + math.exp(-eps))
    scores = np.where(inserted == truthful, 1.0, -1.0) + rng.normal(0, 1e-6, m)  # order among equals: random
    return scores, inserted


def test_the_bound_refutes_a_true_claim_in_at_most_5_percent_of_audits():
    """The attacker's view of a broken auditor: choosing the best guess count without paying for the choice
    refutes true claims far more often than the stated 5%.  Here: scores from an exactly ε = 1 mechanism."""
    rng = np.random.default_rng(0)
    trials = 300
    false_alarms = sum(audit_bound(*_randomized_response(rng, 400, 1.0), delta=0.0).epsilon > 1.0 for _ in range(trials))
    assert false_alarms / trials <= 0.05 + 0.03  # 0.05 + ~2.4 binomial standard errors


def test_the_bound_finds_a_large_leak():
    rng = np.random.default_rng(1)
    bound = audit_bound(*_randomized_response(rng, 1000, 8.0), delta=1e-5)
    assert bound.epsilon > 2.0 and bound.candidates == len(candidate_guesses(1000))


# ---- exposure ----------------------------------------------------------------------------------

def test_exposure_of_a_canary_ranked_first_is_log2_of_the_candidates():
    scores, inserted = [5.0, 1.0, 2.0, 3.0], [True, False, False, False]
    assert exposures(scores, inserted).tolist() == [pytest.approx(2.0)]  # |R| = 4, rank 1
    assert exposures([0.0, 1.0, 2.0, 3.0], inserted).tolist() == [pytest.approx(0.0)]  # last of 4


def test_chance_exposure_is_the_mean_over_uniform_ranks():
    assert chance_exposure(2) == pytest.approx(0.5)
    assert chance_exposure(4) == pytest.approx((2 + 1 + (2 - math.log2(3)) + 0) / 4)
    rng = np.random.default_rng(2)
    s = summarize(rng.normal(size=2000), rng.random(2000) < 0.5)
    assert s.mean == pytest.approx(s.chance, abs=0.15)  # scores that know nothing: chance level


# ---- canaries ----------------------------------------------------------------------------------

def test_canaries_keep_the_node_s_record_format_with_random_secrets_and_fair_coins():
    from fedtune.common.data import DEPARTMENTS, generate_triage
    from fedtune.lab.audit.canaries import make_canaries

    template = generate_triage(1, seed=3)[0]
    cans = make_canaries(template, DEPARTMENTS, 400, seed=7)
    assert all(c.messages[0] == template.messages[0] for c in cans.examples)  # the node's instruction
    assert all(c.label in DEPARTMENTS and c.completion == c.label for c in cans.examples)
    texts = {c.messages[-1]["content"] for c in cans.examples}
    assert len(texts) == 400 and template.messages[-1]["content"] not in texts
    assert 150 < cans.inserted.sum() < 250
    again = make_canaries(template, DEPARTMENTS, 400, seed=7)
    assert again.examples == cans.examples and (again.inserted == cans.inserted).all()


@pytest.mark.adversarial
def test_only_the_audited_simulated_node_trains_on_the_canaries_and_a_deployed_node_never_does(tmp_path):
    """A run config naming a canary file cannot add records to a deployed node: its data is its data-path's."""
    from fedtune.common.config import DataConfig
    from fedtune.common.data import DEPARTMENTS, generate_triage, write_jsonl
    from fedtune.lab.audit.canaries import make_canaries, save
    from fedtune.node.local_data import node_examples

    cans = make_canaries(generate_triage(1)[0], DEPARTMENTS, 20, seed=0)
    _, inserted = save(cans, tmp_path / "audit")
    cfg = DataConfig(records=200, canaries=str(inserted), canary_node=1)
    plain = DataConfig(records=200)
    sim = {"num-partitions": 2}
    audited = node_examples(cfg, {**sim, "partition-id": 1})
    assert audited.train[len(audited.train) - len(cans.trained):] == cans.trained
    assert node_examples(cfg, {**sim, "partition-id": 0}).train == node_examples(plain, {**sim, "partition-id": 0}).train
    own = tmp_path / "own.jsonl"
    write_jsonl(generate_triage(30, seed=5), own)
    deployed = {"data-path": str(own)}
    plain_labels = DataConfig(labels=",".join(DEPARTMENTS))
    assert node_examples(DataConfig(labels=",".join(DEPARTMENTS), canaries=str(inserted), canary_node=0),
                         deployed).train == node_examples(plain_labels, deployed).train


# ---- an audit end to end (tiny model, 2 simulated nodes on the in-process grid) ---------------------

TINY_AUDIT = {  # one round of 150 steps of 8 over ~85 records: enough for a tiny model to memorise words
    "federation.rounds": 1, "train.local-steps": 150, "train.batch-size": 8, "train.lr": 0.02, "lora.r": 8,
    "lora.alpha": 16.0, "data.partition": "iid", "privacy.target-epsilon": 2.0, "secagg.enabled": False,
    "model.max-length": 96, "train.eval-max-new-tokens": 8,
    "privacy.delta": 1e-5,  # the bound's δ term is 2·m·δ: at the default δ = 0.1/N, 100 canaries refute nothing
}


@pytest.fixture(scope="module")
def tiny_audit(smol_tokenizer, tmp_path_factory):
    """One audit (DP on, then off) of node hospital-0 in a 2-node federation of a tiny Llama (hidden 64, small
    initial weights: a 2-layer random model with peaked logits barely learns) on free-text chat records, whose
    canaries' answers are random words the model can memorise."""
    import dataclasses

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from fedtune.common.data import generate_triage, write_jsonl
    from fedtune.lab.audit.run import audit

    folder = tmp_path_factory.mktemp("audit-setup")
    torch.manual_seed(0)
    tok = smol_tokenizer
    LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
        initializer_range=0.05)).save_pretrained(folder / "model")
    tok.save_pretrained(folder / "model")
    records = [dataclasses.replace(ex, label=None) for ex in generate_triage(80, seed=2, instruction="Label it.")]
    write_jsonl(records, folder / "notes.jsonl")
    preset = folder / "tiny.toml"
    preset.write_text(f'[model]\nname = "{folder / "model"}"\nprecision = "fp32"\n\n[data]\n'
                      f'source = "{folder / "notes.jsonl"}"\n\n[simulation]\nnodes = 2\n')
    sets = [f"{k}={v}" for k, v in TINY_AUDIT.items()]
    return audit(preset, folder / "out", sets, canaries=100, seed=11, quiet=True, runner=_in_process)


def _in_process(preset, overrides, out, quiet=True):
    """One federation of the preset on the in-process grid (the real ServerApp and ClientApp code without
    Flower's runtime, which tests/test_simulation.py covers): the same results folder, a fraction of the time."""
    import dataclasses
    import time

    from fedtune.common.config import load_preset
    from fedtune.coordinator.report import read_metrics
    from fedtune.coordinator.server_app import run_federation
    from fedtune.lab.simulation import SimulationResult, check_data

    from loopback import LoopbackGrid

    cfg, info = load_preset(preset, overrides)
    check_data(cfg, info.num_nodes)
    cfg = dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, dir=str(out)))
    start = time.monotonic()
    run_federation(LoopbackGrid(info.num_nodes, cfg.to_flat()), cfg, out, run_id=7)
    return SimulationResult(out, read_metrics(out / "metrics.jsonl"), time.monotonic() - start)


def test_with_dp_off_inserted_canaries_score_higher_than_the_others(tiny_audit):
    off = next(r for r in tiny_audit.runs if r.setting == "DP off")
    cans = np.asarray(json.loads((tiny_audit.report.parent / "inserted.json").read_text()))
    scores = np.asarray(off.scores)
    assert scores[cans].mean() > scores[~cans].mean()
    assert off.exposure.mean > off.exposure.chance
    assert off.bound.epsilon > 0  # the power check: without DP the audit refutes some ε at 95%


def test_with_dp_on_the_bound_stays_within_the_node_s_reported_epsilon(tiny_audit):
    on = next(r for r in tiny_audit.runs if r.setting == "DP on")
    assert on.reported_epsilon is not None and 0 < on.reported_epsilon <= 2.0 + 1e-6
    assert on.bound.epsilon <= on.reported_epsilon
    assert tiny_audit.outcome in ("passed", "too weak")


def test_the_audit_report_puts_the_bound_the_reported_epsilon_and_exposure_side_by_side(tiny_audit):
    out = tiny_audit.report.parent
    text = tiny_audit.report.read_text()
    assert "| DP on |" in text and "| DP off |" in text and "Outcome:" in text
    data = json.loads((out / "audit.json").read_text())
    assert [r["setting"] for r in data["runs"]] == ["DP on", "DP off"]
    assert all(len(r["scores"]) == 100 for r in data["runs"])
    assert (out / "canary_scores.png").read_bytes()[:4] == b"\x89PNG"


def test_an_epsilon_hat_above_the_reported_epsilon_is_reported_as_a_failure():
    from fedtune.lab.audit.bound import AuditBound
    from fedtune.lab.audit.exposure import Exposure
    from fedtune.lab.audit.report import FAILED, WEAK, AuditedRun, verdict

    def run(setting, reported, eps_hat):
        return AuditedRun(setting, "", 1.0, reported, 1e-5, None, AuditBound(eps_hat, 0.95, 1e-5, 100, Guesses(5, 5), 10, 14),
                          Exposure(1, 2, 1.4, 6, 51), [])

    outcome, why = verdict([run("DP on", 1.0, 1.5), run("DP off", None, 3.0)])
    assert outcome == FAILED and "AUDIT FAILED" in why
    assert verdict([run("DP on", 8.0, 0.0), run("DP off", None, 0.2)])[0] == WEAK
    assert verdict([run("DP on", 8.0, 0.0)])[0] == WEAK


def test_the_audit_command_refuses_a_node_the_preset_does_not_have_before_anything_runs(tmp_path, capsys):
    from fedtune.cli import main

    preset = tmp_path / "two.toml"
    preset.write_text("[simulation]\nnodes = 2\n")
    out = tmp_path / "audit"
    assert main(["privacy", "audit", str(preset), "--node", "hospital-5", "--out", str(out)]) == 2
    assert "hospital-0 .. hospital-1" in capsys.readouterr().err
    assert not out.exists()
