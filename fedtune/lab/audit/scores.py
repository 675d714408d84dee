"""How much a run's final adapter learnt each canary: the drop of its training loss against the base model.

The loss is the run's own per-sample objective (``train.objective``), computed for every canary
with the adapter on and off.  For a labelled task the drop is centred per label (minus the mean
drop of the canaries carrying the same label): the adapter shifts every record towards the labels
its node sees most, which says nothing about one canary.  The centring uses only the scores and
the public canary set, never the coin flips, so the audit's guesses stay valid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from fedtune.common.config import RunConfig
from fedtune.common.data import Example, PromptEncoder
from fedtune.common.model import load_base_model, load_tokenizer
from fedtune.common.objective import objective_for

BATCH = 16


def _losses(objective, model, n: int) -> np.ndarray:
    with torch.no_grad():
        parts = [objective(model, np.arange(i, min(i + BATCH, n))).float().cpu() for i in range(0, n, BATCH)]
    return torch.cat(parts).numpy().astype(float)


def loss_drops(cfg: RunConfig, adapter_dir: Path, canaries: Sequence[Example], labels: Sequence[str]) -> np.ndarray:
    """Per canary: loss under the base model minus loss under base + the adapter in ``adapter_dir``."""
    from peft import PeftModel

    encoder = PromptEncoder(load_tokenizer(cfg.model.name), cfg.model.max_length)
    data = encoder.encode_all(canaries)
    objective = objective_for(cfg.train.objective, encoder, data, labels, cfg.model.precision)
    model = PeftModel.from_pretrained(load_base_model(cfg.model), str(adapter_dir))
    model.eval()
    trained = _losses(objective, model, len(data))
    with model.disable_adapter():
        base = _losses(objective, model, len(data))
    return base - trained


def centred_by_label(drops: np.ndarray, canaries: Sequence[Example]) -> np.ndarray:
    """``drops`` minus the mean drop of the canaries with the same label (unchanged for free-text canaries)."""
    out = np.asarray(drops, dtype=float).copy()
    labels = [ex.label for ex in canaries]
    for label in set(labels) - {None}:
        idx = [i for i, lab in enumerate(labels) if lab == label]
        out[idx] -= out[idx].mean()
    return out
