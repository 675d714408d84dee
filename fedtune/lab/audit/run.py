"""``fedtune privacy audit PRESET``: simulate the preset with canaries in one node's training data,
score them with the final adapter, and hold the one-run lower bound ε̂ against that node's reported ε.

The same canaries and coin flips are audited twice: as the preset says (DP on) and with DP off (the
power check: an audit that cannot see a leak without DP says nothing with it).  Folder layout::

    OUT/canaries.jsonl, inserted.json, inserted.jsonl   the canaries, the coin flips, what the node trained on
    OUT/dp-on/, OUT/dp-off/                             the two simulations (fedtune simulate results folders)
    OUT/audit.md, audit.json, canary_scores.png          the audit
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from fedtune.common.config import ConfigError, RunConfig, load_preset
from fedtune.lab.audit import canaries as canary_files
from fedtune.lab.audit.bound import audit_bound
from fedtune.lab.audit.exposure import summarize
from fedtune.lab.audit.report import FAILED, AuditedRun, verdict, write
from fedtune.lab.audit.scores import centred_by_label, loss_drops
from fedtune.lab.simulation import SimulationResult, simulate
from fedtune.node.local_data import node_examples

DEFAULT_DELTA = 1e-5  # δ of a DP-off run's bound when no DP run says which δ the node used


@dataclass(frozen=True)
class AuditResult:
    report: Path
    outcome: str
    runs: list[AuditedRun]


def partition_id(node: str | None, num_nodes: int) -> int:
    """``--node``: a simulated node's name (hospital-N) or partition id; default the first node."""
    if node is None:
        return 0
    m = re.fullmatch(r"(?:hospital-)?(\d+)", node.strip())
    if not m or int(m.group(1)) >= num_nodes:
        raise ConfigError(f"--node {node!r}: name a simulated node of this preset, hospital-0 .. hospital-{num_nodes - 1}")
    return int(m.group(1))


def node_ledger(metrics: Sequence[dict], name: str) -> tuple[float | None, float | None]:
    """(ε, δ) the node reported last (its ledger after the run); (None, None) if it never reported one."""
    for record in reversed(metrics):
        for entry in record.get("nodes", {}).values():
            if entry.get("name") == name and entry.get("epsilon") is not None:
                return float(entry["epsilon"]), float(entry["delta"])
    return None, None


def _audit_one(setting: str, result, cfg: RunConfig, name: str, cans: canary_files.Canaries, labels,
               delta: float | None, confidence: float, guesses: int | None) -> AuditedRun:
    eps, reported_delta = node_ledger(result.metrics, name)
    delta = reported_delta if reported_delta is not None else (delta or DEFAULT_DELTA)
    scores = centred_by_label(loss_drops(cfg, result.out / "adapter", cans.examples, labels), cans.examples)
    bound = audit_bound(scores, cans.inserted, delta, confidence, guesses)
    return AuditedRun(setting, str(result.out), result.seconds, eps if cfg.privacy.enabled else None, delta,
                      result.metrics[-1].get("eval_accuracy"), bound, summarize(scores, cans.inserted),
                      [float(s) for s in scores])


Runner = Callable[..., SimulationResult]  # (preset, overrides, out, quiet=) -> a finished run's results folder


def audit(preset: str | Path, out: str | Path, overrides: list[str] | None = None, canaries: int = 100,
          node: str | None = None, power_check: bool = True, guesses: int | None = None, confidence: float = 0.95,
          seed: int | None = None, quiet: bool = False, runner: Runner = simulate) -> AuditResult:
    """Run the audit; the report's outcome is ``failed`` when ε̂ exceeds the reported ε. ``runner`` runs one
    federation of the preset (Flower's Simulation Runtime; tests pass an in-process one)."""
    cfg, info = load_preset(preset, overrides)
    pid = partition_id(node, info.num_nodes)
    out_dir = Path(out).expanduser().resolve()
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"{out_dir} is not empty: give the audit a new --out folder")
    seed = secrets.randbits(31) if seed is None else seed
    node_cfg = {"partition-id": pid, "num-partitions": info.num_nodes}
    own = node_examples(cfg.data, node_cfg)
    labels = own.labels  # the run's label set, from the split node_examples already built
    cans = canary_files.make_canaries(own.train[0], labels, canaries, seed)
    _, inserted_file = canary_files.save(cans, out_dir)
    with_canaries = list(overrides or []) + [f"data.canaries={inserted_file}", f"data.canary-node={pid}"]
    settings = [("DP on", "dp-on", [])] if cfg.privacy.enabled else []
    if power_check or not cfg.privacy.enabled:
        settings.append(("DP off", "dp-off", ["privacy.enabled=false"]))
    runs: list[AuditedRun] = []
    for setting, folder, extra in settings:
        result = runner(preset, with_canaries + extra, out_dir / folder, quiet=quiet)
        run_cfg, _ = load_preset(preset, with_canaries + extra)
        delta = runs[0].delta if runs else None
        runs.append(_audit_one(setting, result, run_cfg, own.name, cans, labels, delta, confidence, guesses))
    report = write(out_dir, own.name, seed, cans.inserted, runs)
    return AuditResult(report, verdict(runs)[0], runs)


def exit_code(result: AuditResult) -> int:
    """1 when the installation failed its audit (ε̂ above the reported ε), else 0."""
    return 1 if result.outcome == FAILED else 0
