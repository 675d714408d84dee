"""``fedtune simulate PRESET --baselines``: the federated run with and without DP (Flower's
Simulation Runtime) plus the in-process baselines (``baselines.py``), in one comparison table.

Layout of the results folder: the preset's own federated run at the top (``metrics.jsonl``,
``adapter/``, ...), the federated run with privacy toggled under ``baselines/federated-*``, and
``comparison.json``/``comparison.md``; ``report.md`` is re-rendered with the table and plots.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

from fedtune.common.config import Preset, RunConfig
from fedtune.common.files import atomic_write_text
from fedtune.coordinator.report import comparison_table, write_report
from fedtune.lab.baselines import Baselines, Row, base_row, federated_row
from fedtune.lab.simulation import SimulationResult, run_simulation_config


def _with_privacy(cfg: RunConfig, enabled: bool) -> RunConfig:
    return dataclasses.replace(cfg, privacy=dataclasses.replace(cfg.privacy, enabled=enabled))


def simulate_with_baselines(cfg: RunConfig, info: Preset, main: SimulationResult, quiet: bool,
                            say: Callable[[str], None] = print) -> list[Row]:
    """Given the preset's finished federated run ``main``, run everything else and write the table."""
    dp = cfg.privacy.enabled
    other_dir = main.out / "baselines" / ("federated-no-dp" if dp else "federated-dp")
    say(f"fedtune: federated run with privacy {'off' if dp else 'on'} -> {other_dir}")
    other = run_simulation_config(_with_privacy(cfg, not dp), info, other_dir, quiet)
    federated = {dp: federated_row(main.metrics, dp, main.seconds),
                 not dp: federated_row(other.metrics, not dp, other.seconds)}
    baselines = Baselines(cfg, info.num_nodes, say)  # DP settings (target ε, C, accountant) from the preset
    rows = [base_row(main.metrics)]
    local = {flag: baselines.local_only(flag) for flag in (True, False)}
    for flag in (True, False):
        rows.append(local[flag][0])
    for flag in (True, False):
        rows.append(local[flag][1])
    for flag in (True, False):
        rows.append(federated[flag])
    for flag in (True, False):
        rows.append(baselines.centralized(flag))
    write_comparison(main.out, rows)
    return rows


def write_comparison(out: Path, rows: list[Row]) -> None:
    table = [r.to_dict() for r in rows]
    atomic_write_text(out / "comparison.json", json.dumps(table, indent=2) + "\n")
    atomic_write_text(out / "comparison.md", "\n".join(comparison_table(table)) + "\n")
    write_report(out)
