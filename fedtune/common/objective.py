"""The training objective: per-sample loss = mean over *that sample's* target tokens.

Hugging Face's ``labels=`` loss averages over all target tokens of the batch, which weights a
sample by its number of target tokens and couples samples together; DP-SGD's per-sample
sensitivity argument needs each sample's loss to depend on that sample alone.  We therefore
compute token losses, average them within each sample, and let the caller average over samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedtune.common.data.prompts import Batch
from fedtune.common.model import autocast


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
    with autocast(precision):
        out = model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask,
            position_ids=batch.position_ids, logits_to_keep=keep, use_cache=False,
        )
    logits = out.logits[:, :-1].float()  # position t predicts token t+1
    targets = batch.input_ids[:, -keep + 1:]
    mask = batch.target_mask[:, -keep + 1:]
    token_loss = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none") * mask
    with torch.no_grad():
        greedy_match = ((logits.argmax(-1) == targets) | ~mask).all(1)
    return Forward(token_loss.sum(1) / mask.sum(1).clamp(min=1), greedy_match)
