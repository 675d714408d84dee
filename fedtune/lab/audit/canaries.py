"""Canaries: random secrets in a node's own record format, each inserted with probability ½.

A canary copies the shape of one of the node's training records (its system instruction and
turns) and replaces the last user turn with a random secret; its answer is a label drawn
uniformly from the task's labels (a labelled task) or a second random secret (free text).  No
canary resembles real data, so what the model learns about one is memorisation of that record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from fedtune.common.data import Example, load_jsonl, write_jsonl
from fedtune.common.files import atomic_write_text

_CONSONANTS = "bcdfghjklmnprstvz"
_VOWELS = "aeiou"
SECRET_WORDS = 6  # words in a canary's text
ANSWER_WORDS = 4  # words in a free-text canary's answer


@dataclass(frozen=True)
class Canaries:
    examples: list[Example]
    inserted: np.ndarray  # bool, one coin flip per canary

    @property
    def trained(self) -> list[Example]:
        return [ex for ex, ins in zip(self.examples, self.inserted) if ins]


def _word(rng: np.random.Generator) -> str:
    syllables = rng.integers(2, 4)
    return "".join(rng.choice(list(_CONSONANTS)) + rng.choice(list(_VOWELS)) for _ in range(syllables))


def secret(rng: np.random.Generator, words: int) -> str:
    """A pronounceable random phrase with a number in it: unlike any real record, cheap to tokenise."""
    parts = [_word(rng) for _ in range(words)]
    parts.insert(int(rng.integers(0, words + 1)), str(int(rng.integers(1000, 10000))))
    return " ".join(parts)


def _with_secret_turn(messages: Sequence[dict], text: str) -> tuple[dict, ...]:
    turns = [dict(m) for m in messages]
    users = [i for i, m in enumerate(turns) if m.get("role") == "user"]
    if users:
        turns[users[-1]]["content"] = text
    else:
        turns.append({"role": "user", "content": text})
    return tuple(turns)


def make_canaries(template: Example, labels: Sequence[str], count: int, seed: int) -> Canaries:
    """``count`` canaries shaped like ``template``, each inserted with probability ½ (coin flips from ``seed``)."""
    if count < 2:
        raise ValueError(f"an audit needs at least 2 canaries, got {count}")
    rng = np.random.default_rng(seed)
    labelled = template.label is not None and len(labels) > 0
    examples = []
    for i in range(count):
        text = secret(rng, SECRET_WORDS)
        answer = str(rng.choice(list(labels))) if labelled else secret(rng, ANSWER_WORDS)
        examples.append(replace(template, messages=_with_secret_turn(template.messages, text), completion=answer,
                                label=answer if labelled else None,
                                group=None if template.group is None else f"canary-{i}"))  # one unit each
    return Canaries(examples, rng.random(count) < 0.5)


def save(canaries: Canaries, folder: Path) -> tuple[Path, Path]:
    """``canaries.jsonl`` (every canary) with ``inserted.json`` (the coin flips: the audit's secret) and
    ``inserted.jsonl`` (what the node trains on)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(canaries.examples, folder / "canaries.jsonl")
    atomic_write_text(folder / "inserted.json", json.dumps([bool(x) for x in canaries.inserted]))
    write_jsonl(canaries.trained, folder / "inserted.jsonl")
    return folder / "canaries.jsonl", folder / "inserted.jsonl"


def load(folder: Path) -> Canaries:
    flips = json.loads((folder / "inserted.json").read_text(encoding="utf-8"))
    return Canaries(load_jsonl(folder / "canaries.jsonl"), np.asarray(flips, dtype=bool))
