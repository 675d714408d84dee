"""Experiment tracking (output.tracking = tensorboard) and `fedtune runs`: both read back and held
against what the run itself recorded in metrics.jsonl."""

from __future__ import annotations

import importlib.util

import pytest

from fedtune.cli import main as cli_main
from fedtune.common.config import ConfigError, RunConfig
from fedtune.coordinator.report import read_metrics
from fedtune.coordinator.server_app import check_start, run_federation
from fedtune.lab.runs_table import RunsError, runs_table, summarise

from conftest import tiny_run_config
from loopback import LoopbackGrid


def _run(run_config, out, **overrides):
    cfg = RunConfig.from_flat({**run_config, "output.dir": str(out), "federation.rounds": 2, **overrides})
    run_federation(LoopbackGrid(3, cfg.to_flat()), cfg, out, run_id=7)
    return read_metrics(out / "metrics.jsonl")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_model_dir):

    root = tmp_path_factory.mktemp("tracked")
    flat = tiny_run_config(tiny_model_dir, root / "ledgers", **{"data.records": 240})
    a = _run(flat, root / "a", **{"output.tracking": "tensorboard"})
    b = _run(flat, root / "b", **{"train.lr": 0.05, "privacy.state-dir": str(root / "ledgers-b")})
    return root, a, b


def test_tensorboard_holds_every_rounds_pooled_metrics_and_each_nodes_reported_epsilon(two_runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, metrics, _ = two_runs
    events = EventAccumulator(str(root / "a" / "tensorboard"))
    events.Reload()
    accuracy = {e.step: e.value for e in events.Scalars("round/eval_accuracy")}
    assert accuracy == pytest.approx({m["round"]: m["eval_accuracy"] for m in metrics})
    for m in metrics[1:]:
        for node in m["nodes"].values():
            logged = {e.step: e.value for e in events.Scalars(f"node/{node['name']}/epsilon")}
            assert logged[m["round"]] == pytest.approx(node["epsilon"], rel=1e-6)
        sent = {e.step: e.value for e in events.Scalars("round/bytes_sent")}
        assert sent[m["round"]] == sum(n["bytes_sent"] for n in m["nodes"].values())
    assert not (root / "b" / "tensorboard").exists()  # off by default


def test_a_missing_tracker_package_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    cfg = RunConfig.from_flat({"output.dir": str(tmp_path / "out"), "output.tracking": "tensorboard"})
    with pytest.raises(ConfigError, match=r"pip install 'fedtune\[tracking\]'"):
        check_start(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_runs_table_shows_each_runs_results_and_the_settings_that_differ(two_runs, capsys):
    root, a, b = two_runs
    assert cli_main(["runs", str(root / "a"), str(root / "b"), "--out", str(root / "runs.md")]) == 0
    table = capsys.readouterr().out
    assert table == (root / "runs.md").read_text()
    header, _, row_a, row_b = table.strip().splitlines()
    assert "train.lr" in header and "output.tracking" in header and "data.records" not in header  # only what differs
    assert row_a.startswith("| a | tensorboard | 0.01 |") and row_b.startswith("| b |  | 0.05 |")
    for row, metrics in ((row_a, a), (row_b, b)):
        assert f"{100 * metrics[-1]['eval_accuracy']:.1f}%" in row
        top = max(n["epsilon"] for m in metrics for n in m["nodes"].values() if "epsilon" in n)
        assert f"| {top:.2f} |" in row
    assert summarise(root / "a").rounds == 2 and summarise(root / "a").nodes == 3


def test_runs_refuses_a_folder_that_is_not_a_results_folder_by_name(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    with pytest.raises(RunsError, match="has no run.json or metrics.jsonl"):
        runs_table([tmp_path / "notes"])
    assert cli_main(["runs", str(tmp_path / "notes")]) == 2
    assert "notes is not a fedtune results folder" in capsys.readouterr().err
