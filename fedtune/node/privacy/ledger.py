"""The node's privacy ledger: every DP round this node ever ran on this dataset, persisted.

One JSON file per dataset fingerprint in the node's state directory, rewritten atomically
(temp file + fsync + rename) after each round, *before* the update leaves the node. It holds
the accountant's full history, so ε is recomputed exactly across rounds, runs and restarts.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from fedtune.common.data import Example
from fedtune.common.files import atomic_write_text
from fedtune.node.privacy.accounting import Segment, epsilon

VERSION = 1


class LedgerError(RuntimeError):
    """The ledger cannot be read or does not belong to this dataset."""


def dataset_fingerprint(examples: Iterable[Example]) -> str:
    """SHA-256 over the canonical JSON of every record (order-sensitive)."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([list(ex.messages), ex.completion, ex.label], sort_keys=True).encode())
        h.update(b"\n")
    return h.hexdigest()


@dataclass
class PrivacyLedger:
    path: Path
    fingerprint: str
    accountant: str
    delta: float
    num_records: int
    history: list[Segment] = field(default_factory=list)
    rounds: list[dict] = field(default_factory=list)

    # -- persistence -----------------------------------------------------------------
    @classmethod
    def open(cls, state_dir: str | Path, fingerprint: str, accountant: str, delta: float, num_records: int) -> "PrivacyLedger":
        """Load this dataset's ledger from ``state_dir``, or start an empty one (not yet written)."""
        directory = Path(state_dir).expanduser()
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LedgerError(f"cannot create the node state directory {directory}: {exc}") from exc
        path = directory / f"privacy-ledger-{fingerprint[:16]}.json"
        if not path.exists():
            return cls(path, fingerprint, accountant, delta, num_records)
        ledger = cls.load(path)
        if ledger.fingerprint != fingerprint:
            raise LedgerError(f"{path} belongs to another dataset (fingerprint mismatch)")
        if ledger.accountant != accountant or ledger.delta != delta:
            raise LedgerError(
                f"{path} was kept with accountant={ledger.accountant} delta={ledger.delta}; this run asks for "
                f"accountant={accountant} delta={delta}. Use the ledger's settings so ε stays comparable"
            )
        return ledger

    @classmethod
    def load(cls, path: Path) -> "PrivacyLedger":
        """Read a ledger file as it is (``open`` also checks it belongs to this dataset and settings)."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                path, str(raw["fingerprint"]), str(raw["accountant"]), float(raw["delta"]), int(raw["num_records"]),
                [(float(s), float(q), int(n)) for s, q, n in raw["history"]], list(raw.get("rounds", [])),
            )
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise LedgerError(
                f"privacy ledger {path} is unreadable ({exc}); it is never half-written by fedtune, so restore "
                "it from backup - deleting it would forget the privacy this dataset already spent"
            ) from exc

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps({
            "version": VERSION, "fingerprint": self.fingerprint, "accountant": self.accountant,
            "delta": self.delta, "num_records": self.num_records,
            "history": [list(seg) for seg in self.history], "epsilon": self.epsilon(), "rounds": self.rounds,
        }, indent=2) + "\n")

    # -- accounting ------------------------------------------------------------------
    def epsilon(self, extra: Iterable[Segment] = ()) -> float:
        return epsilon(list(self.history) + list(extra), self.delta, self.accountant)

    def record(self, segment: Segment, **info) -> float:
        """Append one round's DP steps, persist, and return the new ε."""
        sigma, q, steps = segment
        if self.history and self.history[-1][:2] == (sigma, q):
            self.history[-1] = (sigma, q, self.history[-1][2] + steps)  # same as Opacus: merge equal segments
        else:
            self.history.append((sigma, q, steps))
        eps = self.epsilon()
        self.rounds.append({"time": time.time(), "sigma": sigma, "sample_rate": q, "steps": steps, "epsilon": eps, **info})
        self.save()
        return eps


def show_ledgers(state_dir: Path) -> str:
    """Human-readable summary of every ledger under ``state_dir`` (ε recomputed from the history)."""
    paths = sorted(state_dir.rglob("privacy-ledger-*.json")) if state_dir.is_dir() else []
    if not paths:
        raise LedgerError(f"no privacy ledger found under {state_dir}")
    out = []
    for path in paths:
        ledger = PrivacyLedger.load(path)
        out += [
            f"{path}",
            f"  dataset {ledger.fingerprint[:16]}…  records N={ledger.num_records}  accountant {ledger.accountant.upper()}"
            f"  δ={ledger.delta:.3g}",
            f"  ε spent: {ledger.epsilon():.4f}  over {sum(n for *_, n in ledger.history)} DP-SGD steps "
            f"in {len(ledger.rounds)} rounds",
            "  round  run        σ        q        steps  ε after",
        ]
        for r in ledger.rounds:
            out.append(f"  {r.get('round', '?'):>5}  {str(r.get('run_id', ''))[:9]:9s}  {r['sigma']:<7.4f}  "
                       f"{r['sample_rate']:<7.4f}  {r['steps']:>5}  {r['epsilon']:.4f}")
    return "\n".join(out)
