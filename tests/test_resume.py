"""SIGKILL a real simulation (every process: fedtune, flwr, SuperLink, SuperExec, Ray) after a few
rounds, resume it, and compare with a run that was never interrupted."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fedtune.cli import main as cli_main
from fedtune.common.config import load_preset
from fedtune.coordinator.checkpoint import CheckpointError, load_checkpoint
from fedtune.coordinator.report import read_metrics
from fedtune.coordinator.server_app import run_federation

from loopback import LoopbackGrid

pytestmark = pytest.mark.simulation

ROUNDS = 5


def overrides(tiny_model_dir) -> list[str]:
    # Privacy off: DP noise is fresh OS randomness by design, so only a non-private run can be compared
    # bit for bit. SecAgg+ stays on (its masks cancel exactly); FedAvgM makes the strategy state matter.
    return [f"model.name={json.dumps(str(tiny_model_dir))}", "model.precision=fp32", "lora.r=4", "data.records=120",
            "train.local-steps=3", "train.batch-size=4", f"federation.rounds={ROUNDS}", "federation.min-nodes=3",
            "federation.server-momentum=0.5", "simulation.nodes=3", "simulation.cpus-per-node=1",
            "privacy.enabled=false"]


def _process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, session id), read from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                table[int(entry.name)] = (int(fields[1]), int(fields[3]))
            except (OSError, IndexError, ValueError):
                pass
    return table


def kill_everything(root: int) -> None:
    """SIGKILL ``root``, its descendants and every process in their sessions (Flower starts the SuperLink
    and SuperExec in sessions of their own; Ray's workers are re-parented to init)."""
    table = _process_table()
    tree, grew = {root}, True
    while grew:
        children = {pid for pid, (ppid, _) in table.items() if ppid in tree} - tree
        tree |= children
        grew = bool(children)
    sessions = {table[p][1] for p in tree if p in table}
    for pid, (_, sid) in table.items():
        if pid in tree or sid in sessions:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def completed_round(out: Path) -> int:
    try:
        return load_checkpoint(out).round
    except CheckpointError:
        return -1


@pytest.fixture(scope="module")
def straight(tiny_model_dir, tmp_path_factory):
    """The uninterrupted run, in-process (real ServerApp loop and ClientApp over tests/loopback.py) with
    one torch thread like each simulated node's: bit-identical to the same run on Flower's Simulation
    Runtime (measured), and 50 s cheaper than starting Flower once more."""
    cfg, _ = load_preset(None, overrides(tiny_model_dir))
    out = tmp_path_factory.mktemp("straight") / "run"
    cfg = dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, dir=str(out)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_federation(LoopbackGrid(3, cfg.to_flat()), cfg, out, run_id=7)
    finally:
        torch.set_num_threads(threads)
    return load_checkpoint(out)


def test_sigkill_after_a_round_then_resume_keeps_every_round_once_and_matches_the_uninterrupted_run(
        straight, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "fedtune.cli", "simulate", "--quiet", "--out", str(out), *sum(
        (["--set", o] for o in overrides(tiny_model_dir)), [])]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while completed_round(out) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    kill_everything(proc.pid)
    proc.wait()
    time.sleep(1)  # let the kernel finish reaping
    done = completed_round(out)
    assert 2 <= done < ROUNDS, "the run was not killed mid-way"
    assert subprocess.run(["pgrep", "-f", str(out)], capture_output=True).stdout == b""
    kept = load_checkpoint(out).records
    assert not (out / "adapter").exists()  # the killed run never got to its end

    assert cli_main(["simulate", "--resume", str(out), "--quiet"]) == 0
    assert f"finished {ROUNDS} rounds" in capsys.readouterr().out
    resumed = load_checkpoint(out)
    metrics = read_metrics(out / "metrics.jsonl")
    assert [m["round"] for m in metrics] == list(range(ROUNDS + 1))  # each round exactly once
    assert metrics[: done + 1] == kept  # rounds 0..r kept as they were
    assert [r["after_round"] for r in json.loads((out / "run.json").read_text())["resumed"]] == [done]
    for name, arr in straight.adapter.items():  # same seed: the same global adapter and FedAvgM velocity
        np.testing.assert_array_equal(resumed.adapter[name], arr)
        np.testing.assert_array_equal(resumed.strategy[name], straight.strategy[name])
    assert [m["eval_loss"] for m in metrics] == [r["eval_loss"] for r in straight.records]
