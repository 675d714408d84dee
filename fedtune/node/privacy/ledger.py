"""The node's privacy ledger: every DP round this node ever ran on its records, persisted.

One JSON file per *data source* in the node's state directory, rewritten atomically (temp file,
fsync, rename, directory fsync) after each round, *before* the update leaves the node.  It holds
the accountant's full history, so ε is recomputed exactly across rounds, runs and restarts.

What a ledger is tied to is the node's choice, never the coordinator's: a deployed node's ledger
is keyed by its own ``data-path`` (and found again by the fingerprint of the raw file, should
the file move), so no run-config key (split seed, format, field names, held-out fraction) can
start the same records on a fresh budget.  The caller holds ``LEDGER_LOCK`` in the state dir
from the budget check to the write (``node/local_round.py``).
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
from fedtune.node.privacy.accounting import DEFAULT_ACCOUNTANT, Segment, epsilon

VERSION = 2
LEDGER_LOCK = "privacy-ledger.lock"  # held from a round's budget check until its ledger write


class LedgerError(RuntimeError):
    """The ledger cannot be read or does not belong to this data source."""


def dataset_fingerprint(examples: Iterable[Example]) -> str:
    """SHA-256 over the canonical JSON of every record (order-sensitive)."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([list(ex.messages), ex.completion, ex.label], sort_keys=True).encode())
        h.update(b"\n")
    return h.hexdigest()


def _file_name(source: str) -> str:
    return f"privacy-ledger-{hashlib.sha256(source.encode()).hexdigest()[:16]}.json"


@dataclass
class PrivacyLedger:
    path: Path
    source: str  # what the spending is tied to: a deployed node's data-path (or a simulated split)
    accountant: str
    delta: float
    num_records: int  # privacy units (records, or groups for unit = group)
    history: list[Segment] = field(default_factory=list)
    rounds: list[dict] = field(default_factory=list)
    unit: str = "record"
    raw_fingerprints: list[str] = field(default_factory=list)  # of the source's contents, as seen

    # -- persistence -----------------------------------------------------------------
    @classmethod
    def open(cls, state_dir: str | Path, source: str, accountant: str | None, delta: float, num_records: int,
             unit: str = "record", raw_fingerprint: str = "") -> "PrivacyLedger":
        """This source's ledger from ``state_dir`` (also found by ``raw_fingerprint`` if the file moved),
        or a new one (not yet written) that starts from any version-1 ledgers found there.  ``accountant``
        None: the ledger's own (one kept before PRV became the default stays on RDP), or the default."""
        directory = Path(state_dir).expanduser()
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LedgerError(f"cannot create the node state directory {directory}: {exc}") from exc
        path = directory / _file_name(source)
        if not path.exists() and raw_fingerprint:
            path = next((q for q in sorted(directory.glob("privacy-ledger-*.json"))
                         if raw_fingerprint in _peek(q).get("raw_fingerprints", [])), path)
        if not path.exists():
            return cls._new(path, source, accountant, delta, num_records, unit, raw_fingerprint)
        ledger = cls.load(path)
        ledger._check(accountant or ledger.accountant, unit)
        if raw_fingerprint and raw_fingerprint not in ledger.raw_fingerprints:
            ledger.raw_fingerprints.append(raw_fingerprint)  # the records changed: their spending carries on
        ledger.num_records = num_records
        return ledger

    @classmethod
    def _new(cls, path, source, accountant, delta, num_records, unit, raw_fingerprint) -> "PrivacyLedger":
        """Histories of version-1 ledgers (keyed by the training split) carry over: never a fresh start."""
        legacies = [cls.load(old) for old in sorted(path.parent.glob("privacy-ledger-*.json"))
                    if _peek(old).get("version") == 1]
        accountant = accountant or (legacies[0].accountant if legacies else DEFAULT_ACCOUNTANT)
        ledger = cls(path, source, accountant, delta, num_records, unit=unit,
                     raw_fingerprints=[raw_fingerprint] if raw_fingerprint else [])
        for legacy in legacies:
            ledger._check(legacy.accountant, "record")
            ledger.history += legacy.history
            ledger.rounds += [{**r, "carried_over_from": Path(legacy.path).name} for r in legacy.rounds]
        return ledger

    def _check(self, accountant: str, unit: str) -> None:
        if self.accountant != accountant:
            raise LedgerError(f"{self.path} was kept with accountant={self.accountant}; this node now asks for "
                              f"accountant={accountant}. Keep the ledger's accountant so ε stays comparable")
        if self.unit != unit:
            raise LedgerError(f"{self.path} accounts privacy per {self.unit}; this round asks for per-{unit} "
                              "accounting, which does not compose with it. Keep the node's privacy-unit")

    @classmethod
    def load(cls, path: Path) -> "PrivacyLedger":
        """Read a ledger file as it is (``open`` also checks it belongs to this source and settings)."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                path, str(raw.get("source", raw.get("fingerprint"))), str(raw["accountant"]), float(raw["delta"]),
                int(raw["num_records"]), [(float(s), float(q), int(n)) for s, q, n in raw["history"]],
                list(raw.get("rounds", [])), str(raw.get("unit", "record")),
                [str(f) for f in raw.get("raw_fingerprints", [])],
            )
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise LedgerError(
                f"privacy ledger {path} is unreadable ({exc}); it is never half-written by fedtune, so restore "
                "it from backup - deleting it would forget the privacy this node already spent"
            ) from exc

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps({
            "version": VERSION, "source": self.source, "unit": self.unit, "accountant": self.accountant,
            "delta": self.delta, "num_records": self.num_records, "raw_fingerprints": self.raw_fingerprints,
            "history": [list(seg) for seg in self.history], "epsilon": self.epsilon(), "rounds": self.rounds,
        }, indent=2) + "\n")

    # -- accounting ------------------------------------------------------------------
    def epsilon(self, extra: Iterable[Segment] = (), delta: float | None = None) -> float:
        """ε of the whole history (+ ``extra``) at the ledger's δ, or at a smaller requested one."""
        at = self.delta if delta is None else min(delta, self.delta)
        return epsilon(list(self.history) + list(extra), at, self.accountant)

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
            f"  source {ledger.source}  {ledger.unit}s N={ledger.num_records}  accountant {ledger.accountant.upper()}"
            f"  δ={ledger.delta:.3g}",
            f"  ε spent: {ledger.epsilon():.4f}  over {sum(n for *_, n in ledger.history)} DP-SGD steps "
            f"in {len(ledger.rounds)} rounds",
            "  round  run        σ        q        steps  ε after",
        ]
        for r in ledger.rounds:
            out.append(f"  {r.get('round', '?'):>5}  {str(r.get('run_id', ''))[:9]:9s}  {r['sigma']:<7.4f}  "
                       f"{r['sample_rate']:<7.4f}  {r['steps']:>5}  {r['epsilon']:.4f}")
    return "\n".join(out)


def _peek(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}  # unreadable: ``load`` names it if it is this source's ledger
