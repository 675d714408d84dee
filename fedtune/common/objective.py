"""The training objectives, both per sample (DP-SGD clips and noises per sample).

``tokens`` (any task): loss = mean over *that sample's* target tokens.

Hugging Face's ``labels=`` loss averages over all target tokens of the batch, which weights a
sample by its number of target tokens and couples samples together; DP-SGD's per-sample
sensitivity argument needs each sample's loss to depend on that sample alone.  We therefore
compute token losses, average them within each sample, and let the caller average over samples.

``labels`` (a labelled task): loss = cross-entropy of choosing the record's label among all allowed
labels, each scored by its likelihood (``label_scoring``, exactly what evaluation ranks).  Its
gradient carries only what tells the labels apart; the token loss also spends each sample's
clipped gradient on answer format and end-of-turn, which every label shares.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fedtune.common.data.prompts import Batch, Encoded, PromptEncoder
from fedtune.common.frozen_prefix import causal_lm_logits
from fedtune.common.label_scoring import label_indices, label_scores, label_targets
from fedtune.common.model import autocast, model_device

OBJECTIVES = ("auto", "tokens", "labels")
Objective = Callable[[object, np.ndarray], torch.Tensor]  # (model, record indices) -> per-sample losses


@dataclass
class Forward:
    losses: torch.Tensor  # [B] per-sample mean target-token cross-entropy (fp32)
    greedy_match: torch.Tensor  # [B] bool: argmax at every target position is the target token


def per_sample_forward(model, batch: Batch, precision: str = "fp32") -> Forward:
    """Run the model and score each sample's target.

    Targets sit at the end of left-padded rows, so only the last ``max_target + 1`` positions
    need logits (``logits_to_keep``): the vocabulary projection, the costliest single matmul of
    a small LM, runs on a handful of positions instead of the whole sequence.
    """
    keep = batch.max_target + 1
    with autocast(precision, batch.input_ids.device.type):
        logits = causal_lm_logits(model, batch.input_ids, batch.attention_mask, batch.position_ids, keep)
    logits = logits[:, :-1].float()  # position t predicts token t+1
    targets = batch.input_ids[:, -keep + 1:]
    mask = batch.target_mask[:, -keep + 1:]
    token_loss = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none") * mask
    with torch.no_grad():
        greedy_match = ((logits.argmax(-1) == targets) | ~mask).all(1)
    return Forward(token_loss.sum(1) / mask.sum(1).clamp(min=1), greedy_match)


def label_choice_losses(model, encoder: PromptEncoder, items: Sequence[Encoded], targets: Sequence[Sequence[int]],
                        gold: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """[B] per-sample cross-entropy of the gold label against every allowed label (fp32)."""
    scores = label_scores(model, encoder, [e.prompt_ids for e in items], targets, precision)
    return -torch.log_softmax(scores, 1).gather(1, gold.to(scores.device)[:, None]).squeeze(1)


def objective_for(kind: str, encoder: PromptEncoder, data: Sequence[Encoded], labels: Sequence[str],
                  precision: str) -> Objective:
    """The per-sample loss training uses on ``data``: ``labels`` where asked, or for ``auto`` where every training
    answer is one of the task's labels and scoring them all costs at most as many tokens as the prompts
    (a training pass at most ~2x the token objective's); else ``tokens``."""
    if kind not in OBJECTIVES:
        raise ValueError(f"unknown training objective {kind!r}; use one of {', '.join(OBJECTIVES)}")
    gold = label_indices([encoder.reference(e) for e in data], labels) if kind != "tokens" else None
    if kind == "labels" and gold is None:
        raise ValueError("train.objective = 'labels' needs a label set and every training answer to be one of its "
                         "labels; use train.objective = 'tokens' (or 'auto') for free-text answers")
    targets = label_targets(encoder, labels) if gold is not None else []
    packed = sum(len(t) - 1 for t in targets)  # tokens the label blocks add to every row
    if gold is None or (kind == "auto" and packed > sum(len(e.prompt_ids) for e in data) / len(data)):
        return lambda model, idx: per_sample_forward(
            model, encoder.collate([data[i] for i in idx]).to(model_device(model)), precision).losses
    gold_t = torch.tensor(gold)
    return lambda model, idx: label_choice_losses(
        model, encoder, [data[i] for i in idx], targets, gold_t[torch.as_tensor(idx, dtype=torch.long)], precision)
