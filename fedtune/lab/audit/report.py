"""The audit's readable results: ``audit.md`` (ε̂ against the reported ε, exposure, the verdict),
``audit.json`` (the same figures for scripts) and ``canary_scores.png`` (inserted vs not)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from fedtune.common.files import atomic_write_text
from fedtune.coordinator.plots import save_png
from fedtune.lab.audit.bound import AuditBound, can_refute
from fedtune.lab.audit.exposure import Exposure

CLEAR_LEAKAGE = 1.0  # ε̂ the DP-off run must reach for the audit to have the power to see a leak

FAILED, WEAK, PASSED = "failed", "too weak", "passed"


@dataclass(frozen=True)
class AuditedRun:
    setting: str  # "DP on" / "DP off"
    run_dir: str
    seconds: float
    reported_epsilon: float | None  # the audited node's ledger after the run (None: DP off)
    delta: float
    accuracy: float | None  # the global adapter's held-out accuracy in the last round
    bound: AuditBound
    exposure: Exposure
    scores: list[float]

    @property
    def exceeds_reported(self) -> bool:
        return self.reported_epsilon is not None and self.bound.epsilon > self.reported_epsilon


def verdict(runs: Sequence[AuditedRun]) -> tuple[str, str]:
    """(outcome, why): failed if any DP run's ε̂ exceeds its reported ε; too weak unless a DP-off run
    shows ε̂ ≥ CLEAR_LEAKAGE; else passed."""
    bad = [r for r in runs if r.exceeds_reported]
    if bad:
        r = bad[0]
        return FAILED, (f"AUDIT FAILED: ε̂ = {r.bound.epsilon:.2f} exceeds the reported ε = {r.reported_epsilon:.2f} "
                        f"({r.setting}). The installation does not behave as its accounting says: check sampling, "
                        "clipping and noise before training on real data.")
    blind = [r for r in runs if not can_refute(r.bound.canaries, r.delta, r.bound.confidence,
                                                  r.bound.guesses.top if r.bound.candidates == 1 else None)]
    if blind:
        r = blind[0]
        return WEAK, (f"with δ = {r.delta:.2g} and {r.bound.canaries} canaries the bound's δ term (α·δ·2m) alone "
                      "exceeds the significance: no outcome could refute any ε. Audit with a smaller δ "
                      "(--set privacy.delta=1e-5) or fewer canaries.")
    off = [r for r in runs if r.reported_epsilon is None]
    if not off:
        return WEAK, "no DP-off run (power check skipped): a low ε̂ alone shows nothing."
    if max(r.bound.epsilon for r in off) < CLEAR_LEAKAGE:
        return WEAK, (f"the audit was too weak to conclude anything: even with DP off it found ε̂ = "
                      f"{max(r.bound.epsilon for r in off):.2f} < {CLEAR_LEAKAGE} (more canaries, more steps per "
                      "record, or a stronger score would help).")
    return PASSED, ("with DP off the audit sees the leak; with DP on ε̂ stays within the reported ε. "
                    "A lower bound from one run is evidence, not proof: it cannot show that ε is tight.")


def _eps(v: float | None) -> str:
    return "∞ (DP off)" if v is None else f"{v:.2f}"


def render(node: str, canaries: int, inserted: int, seed: int, runs: Sequence[AuditedRun]) -> str:
    outcome, why = verdict(runs)
    lines = [
        f"# Privacy audit of node `{node}`", "",
        f"**Outcome: {outcome}.** {why}", "",
        f"{canaries} canaries (random secrets in the node's record format), {inserted} inserted into its training "
        f"records by independent fair coin flips (seed {seed}); each scored by the drop of its training loss from "
        "the base model to the final global adapter. ε̂ is the one-run lower bound of Steinke, Nasr & Jagielski "
        "(2023) at the stated confidence, Bonferroni-corrected over the guess counts tried; exposure is "
        "Secret-Sharer's (Carlini et al. 2019) against the non-inserted canaries.", "",
        "| setting | reported ε (δ) | ε̂ (confidence) | guesses right (k+, k−) | exposure mean / max bits "
        "(chance, ceiling) | accuracy | wall |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        b, e = r.bound, r.exposure
        acc = "–" if r.accuracy is None else f"{100 * r.accuracy:.1f}%"
        lines.append(
            f"| {r.setting} | {_eps(r.reported_epsilon)} ({r.delta:.2g}) | **{b.epsilon:.2f}** ({100 * b.confidence:.0f}%) "
            f"| {b.correct}/{b.guesses.total} ({b.guesses.top}, {b.guesses.bottom}) of {b.candidates} tried "
            f"| {e.mean:.2f} / {e.max:.2f} ({e.chance:.2f}, {e.ceiling:.2f}) | {acc} | {r.seconds / 60:.1f} min |")
    lines += ["", "![canary scores](canary_scores.png)", "",
              "What this does not show: ε̂ is a *lower* bound from one run; ε̂ below the reported ε is expected "
              "of a correct installation and does not prove the reported ε is tight or that other records "
              "leak less than these canaries.", ""]
    return "\n".join(lines)


def plot_scores(runs: Sequence[AuditedRun], inserted: np.ndarray, path: Path) -> None:
    fig = Figure(figsize=(6.4, 2.8 * len(runs)))
    for i, r in enumerate(runs):
        ax = fig.add_subplot(len(runs), 1, i + 1)
        s = np.asarray(r.scores)
        bins = np.linspace(s.min(), s.max(), 25) if s.max() > s.min() else 10
        ax.hist(s[~inserted], bins=bins, alpha=0.6, label="not inserted")
        ax.hist(s[inserted], bins=bins, alpha=0.6, label="inserted")
        ax.set_title(f"{r.setting}: ε̂ = {r.bound.epsilon:.2f}, reported ε = {_eps(r.reported_epsilon)}")
        ax.set_xlabel("loss drop (base − adapter), centred per label")
        ax.set_ylabel("canaries")
        ax.legend()
    fig.tight_layout()
    save_png(fig, path)


def _finite(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def write(out: Path, node: str, seed: int, inserted: np.ndarray, runs: Sequence[AuditedRun]) -> Path:
    """audit.md, audit.json and canary_scores.png in ``out``; returns audit.md's path."""
    outcome, why = verdict(runs)
    data = {"node": node, "canaries": len(inserted), "inserted": int(inserted.sum()), "seed": seed,
            "outcome": outcome, "why": why,
            "runs": [{k: _finite(v) for k, v in asdict(r).items()} for r in runs]}  # scores: one per canary, in order
    atomic_write_text(out / "audit.json", json.dumps(data, indent=2))
    plot_scores(runs, inserted, out / "canary_scores.png")
    atomic_write_text(out / "audit.md", render(node, len(inserted), int(inserted.sum()), seed, runs))
    return out / "audit.md"
