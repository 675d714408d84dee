"""Failing nodes, bad aggregates, retries, checkpoints and resume on the real ServerApp run loop
(``server_app.run_federation``) and the real ClientApp, connected by an in-process Grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedtune.common.config import ConfigError, RunConfig
from fedtune.coordinator.checkpoint import CheckpointError, checkpoint_path, load_checkpoint
from fedtune.coordinator.report import read_metrics
from fedtune.coordinator.rounds import Coordinator
from fedtune.coordinator.secagg import SecAggServer
from fedtune.coordinator.server_app import run_federation
import fedtune.node.local_round

from loopback import LoopbackGrid
from snapshots import folder_state


def make_run(run_config, out: Path, nodes: int = 4, **overrides):
    cfg = RunConfig.from_flat({**run_config, "output.dir": str(out), "federation.rounds": 2, **overrides})
    return LoopbackGrid(nodes, cfg.to_flat()), cfg


def raise_on(monkeypatch, should_fail):
    """Make the real ClientApp's training raise on the nodes and rounds ``should_fail(partition, round)`` picks."""
    real = fedtune.node.local_round.train_round

    def train_round(cfg, node_config, run_id, rnd, global_arrays, **kwargs):
        if should_fail(int(node_config["partition-id"]), rnd):
            raise OSError("disk full on this node")
        return real(cfg, node_config, run_id, rnd, global_arrays, **kwargs)

    monkeypatch.setattr(fedtune.node.local_round, "train_round", train_round)  # the ClientApp imports it per message


def test_one_of_four_nodes_raising_every_round_the_run_completes_and_reports_it(run_config, tmp_path, monkeypatch):
    raise_on(monkeypatch, lambda pid, rnd: pid == 3)
    out = tmp_path / "out"
    grid, cfg = make_run(run_config, out)
    report = run_federation(grid, cfg, out, run_id=7).read_text()
    metrics = read_metrics(out / "metrics.jsonl")
    assert [m["round"] for m in metrics] == [0, 1, 2]
    for m in metrics[1:]:
        assert m["aggregation"] == "fedavg" and m["aggregated"] == 3 and m["secure_aggregation"]
        failed = [n for n in m["nodes"].values() if n["status"] == "error"]
        assert len(failed) == 1 and "disk full on this node" in failed[0]["error"]
    assert "## Node failures" in report and report.count("disk full on this node") == 2
    assert load_checkpoint(out).round == 2 and (out / "adapter" / "adapter_config.json").is_file()


def test_a_node_that_never_answers_is_reported_as_timed_out_and_the_round_goes_on(run_config, tmp_path):
    out = tmp_path / "out"
    grid, cfg = make_run(run_config, out, **{"federation.rounds": 1, "federation.round-timeout": 1.0})
    grid.drop_at[grid.node_ids[2]] = "train"  # gone from its first training message on
    run_federation(grid, cfg, out, run_id=7)
    m1 = read_metrics(out / "metrics.jsonl")[1]
    silent = m1["nodes"][str(grid.node_ids[2])]
    assert silent["status"] == "timeout" and silent["error"] == "train: no reply in 1s; eval: no reply in 1s"
    assert silent["name"] == "hospital-2"  # known from its round-0 evaluation
    assert m1["aggregation"] == "fedavg" and m1["aggregated"] == 3


def test_a_round_that_fails_is_retried_and_the_retry_is_recorded(run_config, tmp_path, monkeypatch):
    calls: dict = {}

    def first_attempt_of_round_1_on_three_nodes(pid, rnd):
        calls[pid, rnd] = calls.get((pid, rnd), 0) + 1
        return rnd == 1 and pid > 0 and calls[pid, rnd] == 1

    raise_on(monkeypatch, first_attempt_of_round_1_on_three_nodes)
    out = tmp_path / "out"
    grid, cfg = make_run(run_config, out, **{"federation.rounds": 1})
    run_federation(grid, cfg, out, run_id=7)
    (m0, m1) = read_metrics(out / "metrics.jsonl")
    assert m1["aggregation"] == "fedavg" and m1["aggregated"] == 4
    (attempt,) = m1["retries"]
    assert attempt["aggregation"] == "skipped" and "only 1 usable updates" in attempt["reason"]
    assert sorted(attempt["failures"]) == ["hospital-1", "hospital-2", "hospital-3"]
    assert "after 1 failed attempt(s)" in (out / "report.md").read_text()


def test_nan_aggregate_is_rejected_and_the_global_adapter_and_strategy_state_stay(run_config, monkeypatch):
    cfg = RunConfig.from_flat({**run_config, "federation.server-momentum": 0.9})
    coord = Coordinator(LoopbackGrid(4, cfg.to_flat()), cfg, run_id=7)
    velocity = {n: np.full(a.shape, 0.5, np.float32) for n, a in coord.global_arrays.items()}
    coord.strategy.load_state_arrays(velocity)
    before = {n: a.copy() for n, a in coord.global_arrays.items()}
    real_run = SecAggServer.run

    def poisoned(self, adverts):
        result = real_run(self, adverts)
        result.weighted_sum[7] = np.nan  # what a corrupted unmasking would hand to the strategy
        return result

    monkeypatch.setattr(SecAggServer, "run", poisoned)
    nodes: dict = {}
    summary = coord.train(1, nodes)
    assert summary["aggregation"] == "rejected" and "NaN or Inf" in summary["reason"]
    assert all(n["status"] == "ok" for n in nodes.values())  # the nodes did their part
    for name, arr in before.items():
        np.testing.assert_array_equal(coord.global_arrays[name], arr)
        np.testing.assert_array_equal(coord.strategy.velocity[name], velocity[name])


def test_aggregate_of_the_wrong_shape_is_rejected_in_the_clear(run_config, monkeypatch):
    cfg = RunConfig.from_flat({**run_config, "secagg.enabled": False})
    coord = Coordinator(LoopbackGrid(3, cfg.to_flat()), cfg, run_id=7)
    before = {n: a.copy() for n, a in coord.global_arrays.items()}
    import fedtune.coordinator.rounds as coordinator

    real = coordinator.weighted_sum
    monkeypatch.setattr(coordinator, "weighted_sum", lambda ups: ({n: a[:1] for n, a in real(ups)[0].items()}, 3.0))
    summary = coord.train(1, {})
    assert summary["aggregation"] == "rejected" and "shape" in summary["reason"]
    assert all(np.array_equal(coord.global_arrays[n], a) for n, a in before.items())


def test_a_node_sending_a_forged_packed_delta_is_rejected_and_the_round_goes_on_in_the_clear(run_config):
    """Without SecAgg+ a node's delta arrives as a packed record; one whose layout lies is that node's rejected
    update, not the coordinator's crash."""
    from flwr.app import Array, ArrayRecord

    from fedtune.common.messages import PACKED_LAYOUT, PACKED_VALUES

    cfg = RunConfig.from_flat({**run_config, "secagg.enabled": False, "federation.min-nodes": 2})
    grid = LoopbackGrid(3, cfg.to_flat())
    liar = grid.node_ids[1]

    def forge(mtype, nid, reply, _context):
        if mtype == "train" and nid == liar and not reply.has_error():
            reply.content["delta"] = ArrayRecord({PACKED_LAYOUT: Array(np.frombuffer(b'[["a",[Infinity]]]', np.uint8)),
                                                  PACKED_VALUES: Array(np.zeros(4, np.float32))})
    grid.observe = forge
    nodes: dict = {}
    summary = Coordinator(grid, cfg, run_id=7).train(1, nodes)
    assert summary["aggregation"] == "fedavg" and summary["aggregated"] == 2
    assert nodes[str(liar)]["status"] == "rejected" and "Infinity is not a number" in nodes[str(liar)]["error"]


def test_a_round_that_keeps_failing_stops_the_run_with_its_checkpoint(run_config, tmp_path, monkeypatch):
    def always_inf(self, adverts):
        result = real_run(self, adverts)
        result.weighted_sum[:] = np.inf
        return result

    real_run = SecAggServer.run
    monkeypatch.setattr(SecAggServer, "run", always_inf)
    out = tmp_path / "out"
    grid, cfg = make_run(run_config, out, nodes=3, **{"federation.round-retries": 1})
    run_federation(grid, cfg, out, run_id=7)
    ckpt = load_checkpoint(out)
    assert ckpt.round == 0 and [m["round"] for m in read_metrics(out / "metrics.jsonl")] == [0]
    assert all(not a[...].any() for n, a in ckpt.adapter.items() if "lora_B" in n)  # still the initial adapter
    stopped = json.loads((out / "run.json").read_text())["finished"]["stopped"]
    assert stopped["kind"] == "failure" and stopped["round"] == 1 and "failed 2 times" in stopped["reason"]
    report = (out / "report.md").read_text()
    assert "The run stopped at round 1" in report and "--resume" in report


class Crash(BaseException):
    """Stands in for the process dying: not an Exception, so nothing on the way catches it."""


def test_resume_after_a_crash_mid_round_repeats_nothing_and_matches_an_uninterrupted_run(
        run_config, tmp_path, monkeypatch):
    """Privacy off (DP noise is fresh OS randomness by design), SecAgg+ on, FedAvgM: the velocity must be
    restored from the checkpoint too, or the resumed adapter would differ."""
    flat = {**run_config, "privacy.enabled": False, "federation.server-momentum": 0.9}
    grid, cfg = make_run(flat, tmp_path / "straight", **{"federation.rounds": 3})
    run_federation(grid, cfg, tmp_path / "straight", run_id=7)
    straight = load_checkpoint(tmp_path / "straight")

    out = tmp_path / "crashed"
    real_evaluate = Coordinator.evaluate

    def evaluate(self, rnd, nodes):
        if rnd == 2:  # round 2 trained and aggregated; the process dies before it is checkpointed
            raise Crash()
        return real_evaluate(self, rnd, nodes)

    monkeypatch.setattr(Coordinator, "evaluate", evaluate)
    grid, cfg = make_run(flat, out, **{"federation.rounds": 3})
    with pytest.raises(Crash):
        run_federation(grid, cfg, out, run_id=7)
    assert load_checkpoint(out).round == 1 and not (out / "adapter").exists()
    monkeypatch.setattr(Coordinator, "evaluate", real_evaluate)
    grid, cfg = make_run(flat, out, **{"federation.rounds": 3, "output.resume": True})
    run_federation(grid, cfg, out, run_id=7)

    resumed = load_checkpoint(out)
    metrics = read_metrics(out / "metrics.jsonl")
    assert [m["round"] for m in metrics] == [0, 1, 2, 3] and resumed.round == 3
    for name, arr in straight.adapter.items():
        np.testing.assert_array_equal(resumed.adapter[name], arr)
        np.testing.assert_array_equal(resumed.strategy[name], straight.strategy[name])
    for a, b in zip(metrics, straight.records):
        assert a["eval_loss"] == b["eval_loss"]
    run = json.loads((out / "run.json").read_text())
    assert [r["after_round"] for r in run["resumed"]] == [1] and "| resumed | after round 1" in (out / "report.md").read_text()


def test_resume_can_extend_a_finished_run(run_config, tmp_path):
    out = tmp_path / "out"
    grid, cfg = make_run(run_config, out, **{"federation.rounds": 1, "secagg.enabled": False})
    run_federation(grid, cfg, out, run_id=7)
    grid, cfg = make_run(run_config, out, **{"federation.rounds": 2, "secagg.enabled": False, "output.resume": True})
    run_federation(grid, cfg, out, run_id=7)
    assert [m["round"] for m in read_metrics(out / "metrics.jsonl")] == [0, 1, 2]
    assert "finished" in json.loads((out / "run.json").read_text())


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir):
    """A finished one-round run in the clear, to try bad restarts on."""
    out = tmp_path_factory.mktemp("finished") / "out"
    cfg = RunConfig.from_flat({
        "model.name": str(tiny_model_dir), "model.precision": "fp32", "lora.r": 4, "train.batch-size": 4,
        "train.local-steps": 1, "data.records": 120, "privacy.enabled": False, "secagg.enabled": False,
        "federation.rounds": 1, "output.dir": str(out),
    })
    run_federation(LoopbackGrid(2, cfg.to_flat()), cfg, out, run_id=7)
    return cfg


@pytest.mark.parametrize("change, error, message", [
    ({}, ConfigError, "already holds a run"),
    ({"output.resume": True, "train.lr": 0.5}, ConfigError, "train.lr: checkpoint 0.01, now 0.5"),
    ({"output.resume": True, "federation.rounds": 0}, ConfigError, "federation.rounds must be > 0"),
    ({"output.resume": True, "lora.r": 8}, ConfigError, "lora.r"),
    ({"output.resume": True, "output.dir": "/nonexistent/fedtune-run"}, CheckpointError, "does not exist"),
])
def test_bad_restarts_are_refused_with_a_message_and_touch_nothing(finished_run, change, error, message):
    out = Path(finished_run.output.dir)
    before = folder_state(out)
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        cfg = RunConfig.from_flat({**finished_run.to_flat(), **change})
        run_federation(LoopbackGrid(2, cfg.to_flat()), cfg, Path(cfg.output.dir), run_id=7)
    assert folder_state(out) == before and not Path("/nonexistent/fedtune-run").exists()


def test_truncated_checkpoint_is_refused_and_nothing_is_written(finished_run, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(finished_run.output.dir, out)
    data = checkpoint_path(out).read_bytes()
    checkpoint_path(out).write_bytes(data[: len(data) // 2])
    before = folder_state(out)
    cfg = RunConfig.from_flat({**finished_run.to_flat(), "output.dir": str(out), "output.resume": True,
                               "federation.rounds": 2})
    with pytest.raises(CheckpointError, match="damaged or truncated"):
        run_federation(LoopbackGrid(2, cfg.to_flat()), cfg, out, run_id=7)
    assert folder_state(out) == before


def test_fraction_evaluate_asks_only_a_sample_of_nodes_and_the_last_round_asks_everyone(run_config, tmp_path):
    """federation.fraction-evaluate = 0.5 of 4 nodes: rounds 0 and 1 are evaluated on 2 nodes (a seeded sample,
    whatever trained), round 2 (the last) on all 4; without evaluate-all-last the last round samples too."""
    def evaluated(out: Path) -> list[list[str]]:
        return [sorted(n["name"] for n in r["nodes"].values() if "eval_examples" in n)
                for r in read_metrics(out / "metrics.jsonl")]

    grid, cfg = make_run(run_config, tmp_path / "a", **{"federation.fraction-evaluate": 0.5})
    run_federation(grid, cfg, tmp_path / "a", run_id=7)
    rounds = evaluated(tmp_path / "a")
    assert [len(r) for r in rounds] == [2, 2, 4]
    assert [r["evaluated"] for r in read_metrics(tmp_path / "a" / "metrics.jsonl")] == [2, 2, 4]
    assert "| nodes evaluated |" in (tmp_path / "a" / "report.md").read_text()
    grid, cfg = make_run(run_config, tmp_path / "b", **{"federation.fraction-evaluate": 0.5,
                                                         "federation.evaluate-all-last": False})
    run_federation(grid, cfg, tmp_path / "b", run_id=7)
    assert [len(r) for r in evaluated(tmp_path / "b")] == [2, 2, 2]


def test_an_atomic_write_leaves_another_writers_live_temp_file_and_removes_a_crashed_ones(tmp_path):
    """Two tuning workers rewrite one report: one's clean-up must not delete the other's temp file
    mid-write (seen in CI as a failed rename), while a temp file a dead writer left goes."""
    import fcntl

    from fedtune.common.files import atomic_write_text

    target = tmp_path / "tune-report.md"
    in_flight, crashed = tmp_path / ".tune-report.md-abcd1234", tmp_path / ".tune-report.md-zzzz9999"
    crashed.write_text("left by a writer that died (its lock went with it)")
    with in_flight.open("w") as live:
        fcntl.flock(live, fcntl.LOCK_EX)  # what a writer holds from its temp file's creation to the rename
        live.write("another worker is writing")
        atomic_write_text(target, "report")
        assert target.read_text() == "report"
        assert in_flight.exists() and not crashed.exists()
    atomic_write_text(target, "report 2")  # that writer is gone: its temp file is a leftover now
    assert not in_flight.exists() and target.read_text() == "report 2"
