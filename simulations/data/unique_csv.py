"""Shared by the demo-data generators: write (message, label, group) rows with no repeated message."""

import csv
from pathlib import Path
from typing import Callable, Iterable


def write_unique(out: Path, header: list[str], picks: Iterable[tuple[str, str]], message: Callable, rnd,
                 seen: set[str]) -> None:
    """One row per (label, group) pick; a message already written (here or in an earlier file) is drawn
    again: duplicates would leak between training and held-out records."""
    with out.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        count = 0
        for label, group in picks:
            text = message(label, rnd)
            while text in seen:
                text = message(label, rnd)
            seen.add(text)
            w.writerow([text, label, group])
            count += 1
    print(f"{count} messages -> {out}")
