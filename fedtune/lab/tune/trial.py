"""One trial: the preset with the trial's values, run as one Flower simulation in its own folder.

While the federation runs, a watcher reads the rounds it appends to ``metrics.jsonl`` and reports
each round's objective to the study; when the pruner says stop, it asks the federation to end
after the current round (``coordinator/stop_request.py``): the trial's folder is a complete run
(report, adapter, checkpoint), only shorter.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from fedtune.common.config import Preset, RunConfig
from fedtune.coordinator.stop_request import close_gate, decided, open_gate, request_stop
from fedtune.lab.simulation import SimulationResult, run_simulation_config

Runner = Callable[[RunConfig, Preset, Path], SimulationResult]


def simulate_quietly(cfg: RunConfig, info: Preset, out: Path) -> SimulationResult:
    return run_simulation_config(cfg, info, out, quiet=True)


def trial_config(base: Mapping[str, Any], values: Mapping[str, Any]) -> RunConfig:
    flat = {k: v for k, v in base.items() if not k.startswith("output.")}
    return RunConfig.from_flat({**flat, **values})


def round_value(record: Mapping[str, Any], objective: str) -> float | None:
    """A round's value of an objective that can be read per round (held-out metrics, ε so far)."""
    if objective == "epsilon":
        eps = [n.get("epsilon") for n in record.get("nodes", {}).values() if isinstance(n, dict)]
        eps = [e for e in eps if isinstance(e, (int, float))]
        return max(eps) if eps else None
    value = record.get(objective)
    return float(value) if isinstance(value, (int, float)) else None


def final_values(records: Sequence[Mapping[str, Any]], seconds: float, objectives: Sequence[str]) -> list[float]:
    """The trial's objective values: the last round's metrics; ε is the largest any node reached."""
    out = []
    for o in objectives:
        if o == "seconds":
            out.append(round(seconds, 1))
        elif o == "epsilon":
            out.append(max((round_value(r, o) or 0.0) for r in records))
        else:
            v = round_value(records[-1], o)
            if v is None:
                raise ValueError(f"the run reported no {o} in its last round (is the task labelled?)")
            out.append(v)
    return out


class RoundWatcher:
    """Reads new rounds from a running trial's ``metrics.jsonl``; reports them; requests a stop on pruning."""

    def __init__(self, out: Path, trial, objective: str | None, may_prune: bool, poll_seconds: float = 0.5):
        """``objective`` None: a multi-objective study, where Optuna takes no intermediate values."""
        self.out, self.trial, self.objective, self.may_prune = out, trial, objective, may_prune
        self.poll_seconds, self.seen, self.pruned_at = poll_seconds, 0, None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fedtune-tune-watcher", daemon=True)

    def __enter__(self) -> "RoundWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self.poll(final=True)  # rounds written just before the run ended

    def _loop(self) -> None:
        while not self._done.wait(self.poll_seconds):
            self.poll(final=False)

    def _records(self) -> list[dict]:
        try:
            text = (self.out / "metrics.jsonl").read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        lines = text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]  # skip a half-written line
        return [json.loads(line) for line in lines if line.strip()]

    def poll(self, final: bool) -> None:
        last = None
        for record in self._records()[self.seen:]:
            self.seen, last = self.seen + 1, record.get("round", 0)
            if self.objective is None:
                continue
            rnd, value = record.get("round", 0), round_value(record, self.objective)
            if rnd < 1 or value is None:
                continue  # round 0 is the untrained adapter: the same for every trial
            self.trial.report(value, rnd)
            if self.may_prune and not final and self.pruned_at is None and self.trial.should_prune():
                self.pruned_at = rnd
                request_stop(self.out, f"pruned by the tuning study after round {rnd} "
                                       f"({self.objective} {value:.4g} is not promising)")
        if self.may_prune and not final and self.pruned_at is None and last is not None:
            decided(self.out, last)  # the federation may start the next round


def run_trial(trial, cfg: RunConfig, info: Preset, out: Path, objectives: Sequence[str], may_prune: bool,
              runner: Runner = simulate_quietly) -> tuple[SimulationResult, RoundWatcher]:
    cfg = dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, dir=str(out)))
    if may_prune:  # the federation waits after each round for the pruning decision
        out.mkdir(parents=True, exist_ok=True)
        open_gate(out)
    try:
        with RoundWatcher(out, trial, objectives[0] if len(objectives) == 1 else None, may_prune) as watcher:
            result = runner(cfg, info, out)
    finally:
        close_gate(out)
    return result, watcher
