"""Per-round metrics to an experiment tracker (``output.tracking``), besides ``metrics.jsonl``.

The scalars are a pure function of a round's record (``round_scalars``); the tracker is only the
sink.  TensorBoard's event files go to ``<results>/tensorboard`` (``tensorboard --logdir runs``
compares every run under ``runs/``).  Only what the coordinator already holds is logged: pooled
evaluation, timing, bytes and each node's reported ε, never anything a node did not send.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any, Mapping, Protocol

from fedtune.common.config import ConfigError

POOLED = ("eval_accuracy", "eval_macro_f1", "eval_rouge_l", "eval_loss", "eval_perplexity", "central_accuracy",
          "central_loss", "train_loss", "seconds", "train_phase_seconds", "secagg_seconds", "evaluated")
PER_NODE = ("epsilon", "eval_accuracy", "train_seconds")


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def round_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """``tag -> value`` for one round: pooled metrics, bytes sent, nodes trained, each node's metrics."""
    out = {f"round/{k}": v for k in POOLED if (v := _number(record.get(k))) is not None}
    nodes = record.get("nodes", {})
    sent = [b for n in nodes.values() if (b := _number(n.get("bytes_sent"))) is not None]
    if sent:
        out["round/bytes_sent"] = sum(sent)
    out["round/nodes_trained"] = float(sum(1 for n in nodes.values() if "train_seconds" in n and n.get("status") == "ok"))
    for nid, n in nodes.items():
        name = str(n.get("name", nid))
        out.update({f"node/{name}/{k}": v for k in PER_NODE if (v := _number(n.get(k))) is not None})
    return out


class Tracker(Protocol):
    def log(self, rnd: int, scalars: Mapping[str, float]) -> None: ...
    def close(self) -> None: ...


def check_tracker(kind: str) -> None:
    """Refuse a tracker whose package is missing before the run writes anything."""
    if kind == "tensorboard" and importlib.util.find_spec("tensorboard") is None:  # torch's writer needs it
        raise ConfigError("output.tracking = 'tensorboard' needs the tensorboard package: "
                          "pip install 'fedtune[tracking]' (or set output.tracking = '')")


class TensorBoardTracker:
    def __init__(self, folder: Path, first_round: int):
        check_tracker("tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: a resumed run drops the events of rounds it repeats, as metrics.jsonl does
        self.writer = SummaryWriter(str(folder), purge_step=first_round or None)

    def log(self, rnd: int, scalars: Mapping[str, float]) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, rnd)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_tracker(kind: str, out: Path, first_round: int) -> Tracker | None:
    if kind == "tensorboard":
        return TensorBoardTracker(out / "tensorboard", first_round)
    return None
