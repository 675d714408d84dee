"""Ask a running federation to end cleanly after its current round.

Whoever may write the coordinator's results folder (its operator, ``fedtune stop``, a tuning study
pruning a trial) drops a small file there; the ServerApp looks for it after every completed round
(checkpoint and metrics written) and then ends the way a budget stop does: report and adapter of
the completed rounds, the reason in ``run.json``, the checkpoint ready to resume.  A file instead of
a message because the one who asks may not be a Flower party at all, and a stop must survive the
asker's exit.
"""

from __future__ import annotations

import time
from pathlib import Path

from fedtune.common.files import atomic_write_text

STOP_FILE = "stop-request"
GATE_FILE = "round-gate"  # present while someone decides after every round whether the run goes on


def request_stop(out: str | Path, reason: str) -> Path:
    """Ask the federation writing ``out`` to stop after its current round."""
    path = Path(out) / STOP_FILE
    atomic_write_text(path, reason.strip() + "\n")
    return path


def take_stop_request(out: Path) -> str | None:
    """The pending request's reason (removing it, so a later resume runs on), or None."""
    path = out / STOP_FILE
    try:
        reason = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    path.unlink(missing_ok=True)
    return reason or "stop requested"


def clear_stop_request(out: Path) -> None:
    """A request left from before this start (e.g. for a run that had already ended) is stale."""
    (out / STOP_FILE).unlink(missing_ok=True)


def open_gate(out: str | Path) -> None:
    """Before a run starts: hold it after every round until ``decided`` (or a stop request) says so.
    Without a gate the next round starts at once and a stop request lands one round late."""
    atomic_write_text(Path(out) / GATE_FILE, "0\n")


def decided(out: str | Path, rnd: int) -> None:
    """Let the run go on after round ``rnd``."""
    atomic_write_text(Path(out) / GATE_FILE, f"{rnd}\n")


def close_gate(out: str | Path) -> None:
    (Path(out) / GATE_FILE).unlink(missing_ok=True)


def wait_at_gate(out: Path, rnd: int, timeout: float, poll: float = 0.1) -> None:
    """After round ``rnd``: if a gate is open, wait until it passes ``rnd`` or a stop is requested. A
    decider that has gone quiet for ``timeout`` seconds does not hold the federation any longer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (out / STOP_FILE).exists():
        try:
            passed = int((out / GATE_FILE).read_text(encoding="utf-8").strip() or 0)
        except (FileNotFoundError, ValueError):
            return
        if passed >= rnd:
            return
        time.sleep(poll)
