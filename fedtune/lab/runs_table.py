"""``fedtune runs DIR...``: finished results folders side by side, one row each.

Read from each folder's ``run.json`` and ``metrics.jsonl`` only (what the coordinator recorded):
final and best held-out accuracy, the largest ε any node reported and the largest δ, rounds done,
nodes, seconds, and every configuration key whose value differs between the folders given, so the
table shows what was changed and what it did.  A folder that is not a results folder is named in
the error, with what is missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from fedtune.coordinator.report import read_metrics

# keys that differ between any two runs without being a setting worth a column
NOT_SETTINGS = ("output.dir", "output.resume", "privacy.state-dir")


class RunsError(ValueError):
    pass


@dataclass(frozen=True)
class RunSummary:
    folder: Path
    config: dict[str, Any]
    rounds: int
    nodes: int
    final_accuracy: float | None
    best_accuracy: float | None
    max_epsilon: float | None
    max_delta: float | None
    seconds: float | None
    stopped: str


def summarise(folder: str | Path) -> RunSummary:
    out = Path(folder)
    missing = [n for n in ("run.json", "metrics.jsonl") if not (out / n).is_file()]
    if missing:
        raise RunsError(f"{out} is not a fedtune results folder: it has no {' or '.join(missing)} "
                        "(give the folder a run wrote, e.g. runs/20261207-101500)")
    try:
        meta = json.loads((out / "run.json").read_text(encoding="utf-8"))
        records = read_metrics(out / "metrics.jsonl")
    except (OSError, json.JSONDecodeError) as exc:
        raise RunsError(f"cannot read the results in {out}: {exc}") from exc
    accuracies = [r["eval_accuracy"] for r in records if r.get("eval_accuracy") is not None]
    nodes = [n for r in records for n in r.get("nodes", {}).values()]
    eps = [n["epsilon"] for n in nodes if isinstance(n.get("epsilon"), (int, float))]
    deltas = [n["delta"] for n in nodes if isinstance(n.get("delta"), (int, float))]
    finished = meta.get("finished") or {}
    stopped = (finished.get("stopped") or {}).get("reason", "") if finished else "not finished"
    return RunSummary(out, dict(meta.get("config", {})), max((r["round"] for r in records), default=0),
                      int(meta.get("nodes_connected", 0)), accuracies[-1] if accuracies else None,
                      max(accuracies) if accuracies else None, max(eps) if eps else None,
                      max(deltas) if deltas else None, finished.get("seconds_total"), stopped)


def differing_keys(configs: Sequence[dict[str, Any]]) -> list[str]:
    keys = sorted({k for c in configs for k in c} - set(NOT_SETTINGS))
    return [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]


def _fmt(v: Any, spec: str = "") -> str:
    if v is None:
        return "–"
    return format(v, spec) if spec else str(v)


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def render(runs: Sequence[RunSummary]) -> str:
    """A Markdown table: one row per run, a column per differing setting."""
    changed = differing_keys([r.config for r in runs])
    head = ["run", *changed, "rounds", "nodes", "final accuracy", "best accuracy", "max ε", "max δ", "seconds", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        cells = [r.folder.name, *(_fmt(r.config.get(k)) for k in changed), str(r.rounds), str(r.nodes),
                 _pct(r.final_accuracy), _pct(r.best_accuracy), _fmt(r.max_epsilon, ".2f"), _fmt(r.max_delta, ".1e"),
                 _fmt(r.seconds, ".0f"), r.stopped or ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def runs_table(folders: Sequence[str | Path]) -> str:
    return render([summarise(f) for f in folders])
