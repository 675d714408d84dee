"""PNG plots of a federated run (per-round metrics, per-node ε and accuracy, baselines) for its report.

Uses matplotlib's object API on the Agg canvas, so no display is needed and no pyplot state
leaks between calls; every PNG is written atomically so a crash never leaves half a file.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Callable, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from fedtune.common.files import atomic_write_bytes

DPI = 110
FIGSIZE = (6.4, 4.0)
Points = list[tuple[int, float]]


def _num(value) -> float | None:
    """A finite float, or None: metrics may be missing, None, NaN or junk and must simply be skipped."""
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _rounds(records: Sequence[Mapping]) -> list[tuple[int, Mapping]]:
    """(round, record) pairs sorted by round; records without a usable round number are dropped."""
    out = []
    for rec in records or ():
        r = _num(rec.get("round")) if isinstance(rec, Mapping) else None
        if r is not None:
            out.append((int(r), rec))
    return sorted(out, key=lambda p: p[0])


def _series(rounds, get: Callable[[Mapping], object], scale: float = 1.0, min_round: int = 0) -> Points:
    return [(r, v * scale) for r, rec in rounds if r >= min_round and (v := _num(get(rec))) is not None]


def _node_series(rounds, key: str, scale: float = 1.0) -> dict[str, Points]:
    """Per-node points keyed by the node's display name (falls back to its id)."""
    lines: dict[str, Points] = {}
    for r, rec in rounds:
        nodes = rec.get("nodes")
        for node_id, node in (nodes.items() if isinstance(nodes, Mapping) else ()):
            if isinstance(node, Mapping) and (v := _num(node.get(key))) is not None:
                lines.setdefault(str(node.get("name") or node_id), []).append((r, v * scale))
    return lines


def save_png(fig: Figure, path: Path) -> None:
    """Render in memory, then write atomically: readers only ever see whole PNGs."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    atomic_write_bytes(path, buf.getvalue())


def _line_plot(path: Path, title: str, ylabel: str, lines: Mapping[str, Points], percent: bool = False) -> bool:
    """One line (with markers) per labelled series over integer rounds; False if there is nothing to draw."""
    lines = {label: pts for label, pts in lines.items() if pts}
    if not lines:
        return False
    fig = Figure(figsize=FIGSIZE, layout="constrained")
    ax = fig.add_subplot()
    for label, pts in lines.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set(title=title, xlabel="round", ylabel=ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if percent:
        ax.set_ylim(0, 100)
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=100))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    save_png(fig, path)
    return True


def _comparison_plot(path: Path, rows: Sequence[Mapping]) -> bool:
    """Horizontal bars of accuracy per setting, each annotated with its percentage."""
    bars = []
    for row in rows:
        acc = _num(row.get("accuracy"))
        if acc is not None:
            dp = row.get("dp")
            suffix = " (DP)" if dp is True else " (no DP)" if dp is False else ""
            bars.append((f"{row.get('setting', '?')}{suffix}", acc * 100))
    if not bars:
        return False
    fig = Figure(figsize=FIGSIZE, layout="constrained")
    ax = fig.add_subplot()
    ys = range(len(bars))
    drawn = ax.barh(ys, [b[1] for b in bars], color="tab:blue")
    ax.bar_label(drawn, labels=[f"{b[1]:.1f}%" for b in bars], padding=3)
    ax.set_yticks(list(ys), labels=[b[0] for b in bars])
    ax.invert_yaxis()  # keep the caller's row order top to bottom
    ax.set_xlim(0, 112)  # room for the label of a 100 % bar
    ax.set_xticks(range(0, 101, 20))
    ax.xaxis.set_major_formatter(PercentFormatter(xmax=100))
    ax.set(title="Accuracy by setting", xlabel="exact-match accuracy")
    ax.grid(axis="x", alpha=0.3)
    save_png(fig, path)
    return True


def write_plots(records: Sequence[Mapping], out_dir: str | Path, comparison: Sequence[Mapping] | None = None) -> list[Path]:
    """Write the PNGs this run has data for and return their paths (in a stable order)."""
    out = Path(out_dir)
    rounds = _rounds(records)
    if not rounds and not comparison:
        return []
    out.mkdir(parents=True, exist_ok=True)
    acc = {
        "eval accuracy": _series(rounds, lambda r: r.get("eval_accuracy"), 100),
        "eval macro-F1": _series(rounds, lambda r: r.get("eval_macro_f1"), 100),
        "eval ROUGE-L": _series(rounds, lambda r: r.get("eval_rouge_l"), 100),
        "central accuracy": _series(rounds, lambda r: r.get("central_accuracy"), 100),
        "central macro-F1": _series(rounds, lambda r: r.get("central_macro_f1"), 100),
    }
    loss = {
        "eval loss": _series(rounds, lambda r: r.get("eval_loss")),
        "train loss": _series(rounds, lambda r: r.get("train_loss"), min_round=1),
        "central loss": _series(rounds, lambda r: r.get("central_loss")),
    }
    plots = [
        ("accuracy.png", lambda p: _line_plot(p, "Global evaluation per round (round 0 = base model)",
                                             "score", acc, percent=True)),
        ("loss.png", lambda p: _line_plot(p, "Loss per round", "loss", loss)),
        ("epsilon.png", lambda p: _line_plot(p, "Privacy spent: each node's cumulative ε (own ledger)",
                                            "ε", _node_series(rounds, "epsilon"))),
        ("node_accuracy.png", lambda p: _line_plot(p, "Per-node evaluation accuracy", "accuracy",
                                                  _node_series(rounds, "eval_accuracy", 100), percent=True)),
        ("comparison.png", lambda p: bool(comparison) and _comparison_plot(p, comparison)),
    ]
    return [out / name for name, draw in plots if draw(out / name)]
