"""A finished results folder, read and checked once: what a release is made from.

Everything a release states comes from here: ``run.json`` (the resolved configuration),
``metrics.jsonl`` (what the nodes reported, round by round) and ``adapter/`` (the final global
adapter, a PEFT folder).  A missing or damaged file is refused with its name and what to do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ReleaseError(ValueError):
    """A results folder or an export that cannot be used as it is; the message names the file."""


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass(frozen=True)
class RunFiles:
    folder: Path
    meta: dict[str, Any]
    records: list[dict[str, Any]]

    @property
    def config(self) -> dict[str, Any]:
        return self.meta.get("config", {})

    @property
    def adapter(self) -> Path:
        return self.folder / "adapter"

    @classmethod
    def open(cls, folder: str | Path) -> "RunFiles":
        out = Path(folder).expanduser()
        if not out.is_dir():
            raise ReleaseError(f"{out} is not a folder: give the results folder of a finished run (runs/<time>)")
        meta = _json(out / "run.json")
        records = [_json_line(out / "metrics.jsonl", i, line)
                   for i, line in enumerate(_text(out / "metrics.jsonl").splitlines(), 1) if line.strip()]
        run = cls(out, meta, records)
        run.check_adapter()
        return run

    def check_adapter(self) -> None:
        """The adapter folder is complete and its weights file reads (a truncated copy does not)."""
        from safetensors import safe_open

        missing = [n for n in ADAPTER_FILES if not (self.adapter / n).is_file()]
        if missing:
            raise ReleaseError(f"{self.adapter} has no {' or '.join(missing)}: the run did not finish writing its "
                               "adapter, so there is nothing to export")
        try:
            with safe_open(str(self.adapter / ADAPTER_FILES[1]), framework="np") as weights:
                for key in weights.keys():
                    weights.get_tensor(key)
            json.loads((self.adapter / ADAPTER_FILES[0]).read_text(encoding="utf-8"))
        except Exception as exc:  # safetensors raises its own error types for a damaged file
            raise ReleaseError(f"the adapter in {self.adapter} is damaged ({type(exc).__name__}: {exc}); "
                               "it cannot be exported") from exc


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ReleaseError(f"cannot read {path} ({exc.strerror}): is this the results folder of a finished run?") from exc


def _json(path: Path) -> dict:
    try:
        return json.loads(_text(path))
    except json.JSONDecodeError as exc:
        raise ReleaseError(f"{path} is not valid JSON ({exc})") from exc


def _json_line(path: Path, number: int, line: str) -> dict:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise ReleaseError(f"{path} line {number} is not valid JSON ({exc})") from exc


def node_privacy(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per node (by name): the ε and δ its own ledger last reported, its training records and the
    rounds it trained in.  Only what nodes reported: never the run's targets."""
    nodes: dict[str, dict[str, Any]] = {}
    for r in records:
        for n in r.get("nodes", {}).values():
            name = n.get("name")
            if not name or "num_records" not in n:
                continue
            entry = nodes.setdefault(name, {"rounds_trained": 0})
            entry["records"] = n["num_records"]
            if "epsilon" in n:
                entry.update(epsilon=n["epsilon"], delta=n.get("delta"),
                             unit=n.get("privacy_unit"), accountant=n.get("accountant"))
            if n.get("status") == "ok" and "train_seconds" in n:
                entry["rounds_trained"] += 1
    return dict(sorted(nodes.items()))
