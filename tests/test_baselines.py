"""`fedtune simulate PRESET --baselines` on a user's classification CSV (the shipped bank preset,
only the model swapped for the tiny test model): one comparison table in the report."""

import json
from pathlib import Path

import pytest

from fedtune.cli import main
from fedtune.coordinator.report import read_metrics

pytestmark = pytest.mark.simulation

PRESET = Path(__file__).resolve().parent.parent / "simulations" / "bank-support.toml"


@pytest.fixture(scope="module")
def bank_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bank") / "run"
    rc = main(["simulate", str(PRESET), "--baselines", "--quiet", "--out", str(out)]
              + [x for s in _sets(tiny_model_dir) for x in ("--set", s)])
    assert rc == 0
    return out


def _sets(model_dir):
    return [f"model.name={json.dumps(str(model_dir))}", "model.precision=fp32", "train.batch-size=8",
            "federation.rounds=1", "simulation.cpus-per-node=1"]


def test_in_process_baselines_use_the_simulated_nodes_own_splits(bank_run, tiny_model_dir):
    from fedtune.common.config import load_preset
    from fedtune.lab.baselines import Baselines

    cfg, info = load_preset(PRESET, _sets(tiny_model_dir))
    nodes = Baselines(cfg, info.num_nodes).nodes
    round0 = read_metrics(bank_run / "metrics.jsonl")[0]["nodes"].values()
    assert sorted((n.name, len(n.eval)) for n in nodes) == sorted((n["name"], n["eval_examples"]) for n in round0)


def test_comparison_has_every_setting_on_the_same_total_steps(bank_run):
    rows = json.loads((bank_run / "comparison.json").read_text())
    assert [(r["setting"], r["dp"]) for r in rows] == [
        ("base model", None), ("local-only", True), ("local-only", False), ("local-only, all held-out", True),
        ("local-only, all held-out", False), ("federated", True), ("federated", False), ("centralized", True),
        ("centralized", False)]
    total = 1 * 3 * 3  # rounds x local-steps x nodes
    assert all(r["steps"] == total for r in rows[1:]) and rows[0]["steps"] == 0
    for r in rows:
        assert 0 <= r["accuracy"] <= 1 and r["macro_f1"] is not None and r["loss"] > 0
    eps = {(r["setting"], r["dp"]): r["epsilon"] for r in rows}
    assert all(0 < eps[(s, True)] <= 8.0 + 1e-6 for s in ("local-only", "federated", "centralized"))
    # the all-held-out local rows score the same models on every node's records: the federated run's count
    assert eps[("local-only, all held-out", True)] == eps[("local-only", True)]
    assert all(eps[(s, False)] is None for s in ("local-only", "federated", "centralized"))
    # the base-model row is the federated run's round 0 (same records, same initial adapter)
    first = read_metrics(bank_run / "metrics.jsonl")[0]
    assert rows[0]["accuracy"] == pytest.approx(first["eval_accuracy"])
    assert rows[0]["loss"] == pytest.approx(first["eval_loss"], rel=1e-4)


def test_report_shows_table_and_plots_and_central_eval(bank_run):
    report = (bank_run / "report.md").read_text()
    assert "## Federated vs baselines" in report
    for setting in ("| base model |", "| local-only | yes |", "| federated | no |", "| centralized | yes |"):
        assert setting in report
    for png in ("accuracy.png", "loss.png", "epsilon.png", "node_accuracy.png", "comparison.png"):
        assert (bank_run / png).read_bytes().startswith(b"\x89PNG") and f"]({png})" in report
    metrics = read_metrics(bank_run / "metrics.jsonl")
    for m in metrics:
        assert m["central_examples"] == 150 and 0 <= m["central_accuracy"] <= 1
        assert m["eval_macro_f1"] is not None and m["eval_perplexity"] > 1
        nodes = m["nodes"].values()
        assert sum(n["eval_examples"] for n in nodes) == m["eval_examples"] and len(nodes) == 3
    # the run without DP lives beside it, as a full results folder of its own
    assert (bank_run / "baselines" / "federated-no-dp" / "report.md").is_file()
