"""Text evaluation metrics for generated answers (pure Python, no torch).

* ``normalize_answer`` (SQuAD-style): NFKC, lowercase, delete Unicode punctuation (``P*``),
  drop whole-word a/an/the (unless nothing else is left: a label "A" stays "a"),
  collapse whitespace.  Every metric compares normalized texts.
* ``rouge_l``: ROUGE-L F1 (beta = 1) on whitespace tokens; with L the longest common
  subsequence, P = L/len(pred), R = L/len(ref), F1 = 2PR/(P+R).
* ``LabelCounts``: per-label tp/fp/fn for classification-as-generation.  A prediction matching
  no label is *invalid*: a false negative for the gold label, a false positive for none.
  Counts are summed across nodes before F1, so macro-F1 is that of the pooled predictions
  (averaging per-node F1s would not be).
* ``perplexity``: exp(mean token negative log-likelihood).
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Sequence

_ARTICLES = re.compile(r"\b(?:a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Canonical form so that case, punctuation, articles and spacing do not count as errors."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    kept = " ".join(_ARTICLES.sub(" ", text).split())
    # An answer that is only an article (labels "A", "An" of a multiple-choice task) keeps it: "A" != "".
    return kept or " ".join(text.split())


def exact_match(prediction: str, reference: str) -> bool:
    """True when the two texts are equal after ``normalize_answer``."""
    return normalize_answer(prediction) == normalize_answer(reference)


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Longest common subsequence length by the O(len(a)*len(b)) DP, one row at a time."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over normalized whitespace tokens; gives partial credit for free-text answers."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return 1.0 if pred == ref else 0.0
    # 2PR/(P+R) with P = L/len(pred), R = L/len(ref) simplifies to 2L/(len(pred)+len(ref)).
    return 2 * _lcs_length(pred, ref) / (len(pred) + len(ref))


def match_label(prediction: str, labels: Sequence[str]) -> str | None:
    """The label equal to the prediction after normalization, or None (an invalid answer)."""
    target = normalize_answer(prediction)
    for label in labels:
        if normalize_answer(label) == target:
            return label
    return None


def _add(x: list[int], y: list[int]) -> list[int]:
    return [a + b for a, b in zip(x, y)]


@dataclass
class LabelCounts:
    """Per-label true-positive / false-positive / false-negative counts; summable across nodes
    (so a macro-F1 over pooled predictions can be computed from per-node counts)."""

    tp: list[int]
    fp: list[int]
    fn: list[int]

    @classmethod
    def zeros(cls, n: int) -> "LabelCounts":
        """Empty counts for ``n`` labels (the identity for ``+``)."""
        return cls([0] * n, [0] * n, [0] * n)

    @classmethod
    def from_predictions(
        cls, references: Sequence[str], predictions: Sequence[str], labels: Sequence[str]
    ) -> "LabelCounts":
        """Count gold label strings against raw generated texts (mapped with ``match_label``)."""
        if len(references) != len(predictions):
            raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
        index: dict[str, int] = {}
        for i, label in enumerate(labels):
            key = normalize_answer(label)
            if key in index:
                raise ValueError(f"labels {labels[index[key]]!r} and {label!r} normalize alike")
            index[key] = i
        counts = cls.zeros(len(labels))
        for reference, prediction in zip(references, predictions):
            gold = index.get(normalize_answer(reference))
            if gold is None:
                raise ValueError(f"reference {reference!r} is not one of the labels {list(labels)}")
            guess = index.get(normalize_answer(prediction))
            if guess == gold:
                counts.tp[gold] += 1
                continue
            counts.fn[gold] += 1
            if guess is not None:  # an invalid answer is a miss, not a vote for any label
                counts.fp[guess] += 1
        return counts

    def __add__(self, other: "LabelCounts") -> "LabelCounts":
        """Elementwise sum, e.g. of per-node counts."""
        if not isinstance(other, LabelCounts):
            return NotImplemented
        if len(self.tp) != len(other.tp):
            raise ValueError(f"cannot add counts for {len(self.tp)} and {len(other.tp)} labels")
        return LabelCounts(
            _add(self.tp, other.tp), _add(self.fp, other.fp), _add(self.fn, other.fn)
        )

    def f1(self) -> list[float | None]:
        """Per-label F1 = 2tp/(2tp+fp+fn); None for a label neither present nor predicted."""
        return [
            None if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
            for tp, fp, fn in zip(self.tp, self.fp, self.fn)
        ]

    def macro_f1(self) -> float | None:
        """Mean F1 over labels that occur; unseen labels are skipped rather than scored 0 or 1."""
        scores = [s for s in self.f1() if s is not None]
        return sum(scores) / len(scores) if scores else None


def perplexity(token_nll_sum: float, token_count: int) -> float:
    """exp(mean token NLL); ``inf`` rather than OverflowError for a hopeless model."""
    if token_count <= 0:
        raise ValueError(f"token_count must be positive, got {token_count}")
    try:
        return math.exp(token_nll_sum / token_count)
    except OverflowError:
        return float("inf")
