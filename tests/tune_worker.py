"""A ``fedtune tune`` worker process whose trials run the real ServerApp loop and ClientApps in-process
(tests/loopback.py) instead of starting Flower for every trial: the study machinery under test
(storage, heartbeats, dead-worker recovery, several workers) is the real one, and a trial costs
seconds.  Usage: python tests/tune_worker.py PRESET STUDY_FOLDER TRIALS"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from fedtune.common.config import Preset, RunConfig, load_preset  # noqa: E402
from fedtune.coordinator.report import read_metrics  # noqa: E402
from fedtune.coordinator.server_app import run_federation  # noqa: E402
from fedtune.lab.simulation import SimulationResult  # noqa: E402
from fedtune.lab.tune.study import make_job, run_study  # noqa: E402
from loopback import LoopbackGrid  # noqa: E402


def loopback_runner(cfg: RunConfig, info: Preset, out: Path) -> SimulationResult:
    start = time.monotonic()
    run_federation(LoopbackGrid(info.num_nodes, cfg.to_flat()), cfg, out, run_id=7)
    stopped = json.loads((out / "run.json").read_text())["finished"].get("stopped")
    return SimulationResult(out, read_metrics(out / "metrics.jsonl"), time.monotonic() - start, stopped)


if __name__ == "__main__":
    torch.set_num_threads(1)
    preset, folder, trials = sys.argv[1:4]
    cfg, info = load_preset(preset)
    job = make_job(cfg, info, int(trials), folder)
    run_study(job, runner=loopback_runner, print_line=lambda line: print(f"[{os.getpid()}] {line}", flush=True))
