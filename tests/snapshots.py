"""What a folder holds, to assert that a refused command created, changed or removed nothing."""

from __future__ import annotations

from pathlib import Path


def folder_state(folder: Path) -> dict:
    """Every entry under ``folder`` (none if it does not exist): file contents and modification times."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}
