"""Predict a labelled task's answer by scoring every allowed label, not by free generation.

Each label's score is the model's log-likelihood of the label followed by end-of-turn, the very
target training teaches, so the prediction is always a valid label, and ``label + end`` ranks
labels that are prefixes of one another correctly.

One forward pass per batch of records scores every label: each row packs the prompt and, after
it, every label's tokens as separate blocks; a 4-D attention mask lets each block see the prompt
and its own earlier tokens only, with positions restarting after the prompt, so a block is scored
exactly as if it followed the prompt alone (tests compare with full teacher-forced forwards).  No
KV cache is copied per label and the prompt is encoded once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from fedtune.common.data.prompts import PromptEncoder
from fedtune.common.frozen_prefix import causal_lm_logits
from fedtune.common.metrics import match_label
from fedtune.common.model import autocast, model_device

SCORED_POSITIONS = 2048  # rows x scored positions per pass: bounds the logits ([rows, positions, vocab])


def label_targets(encoder: PromptEncoder, labels: Sequence[str]) -> list[tuple[int, ...]]:
    """Token ids of each label's answer exactly as training encodes it (label tokens + end-of-turn)."""
    return [tuple(encoder.tok(label, add_special_tokens=False)["input_ids"]) + (encoder.end_id,) for label in labels]


def label_indices(references: Sequence[str], labels: Sequence[str]) -> list[int] | None:
    """Each reference's index among ``labels`` (after answer normalisation); None unless every one is a label."""
    gold = [match_label(r, labels) for r in references] if labels else []
    if not labels or any(g is None for g in gold):
        return None
    return [list(labels).index(g) for g in gold]


def records_per_pass(targets: Sequence[Sequence[int]], batch_size: int) -> int:
    return max(1, min(batch_size, SCORED_POSITIONS // (1 + sum(len(t) - 1 for t in targets))))


@dataclass(frozen=True)
class _Packing:
    """Where each label's block sits after the (left-padded) prompts, and what each position predicts."""

    prompt_width: int
    starts: tuple[int, ...]  # first packed position of each label's block
    block: torch.Tensor  # [L] label index of each position, -1 on the prompt
    offset: torch.Tensor  # [L] position within its block

    @classmethod
    def of(cls, prompt_width: int, targets: Sequence[Sequence[int]]) -> "_Packing":
        feeds = [len(t) - 1 for t in targets]  # a block feeds its target but the last token
        length = prompt_width + sum(feeds)
        block, offset, starts, at = torch.full((length,), -1), torch.zeros(length, dtype=torch.long), [], prompt_width
        for i, n in enumerate(feeds):
            starts.append(at)
            block[at:at + n], offset[at:at + n] = i, torch.arange(n)
            at += n
        return cls(prompt_width, tuple(starts), block, offset)

    def mask(self, real: torch.Tensor) -> torch.Tensor:
        """[B, 1, L, L] True where a query may attend a key: a prompt position sees the prompt causally; a label
        position sees the whole prompt and its own block causally; padding is never seen (but sees itself)."""
        q = torch.arange(len(self.block))
        causal = q[None, :] <= q[:, None]
        on_prompt = self.block < 0
        same_block = (self.block[:, None] == self.block[None, :]) & ~on_prompt[:, None]
        allowed = causal & (same_block | on_prompt[None, :])
        return ((allowed[None] & real[:, None, :]) | torch.eye(len(q), dtype=torch.bool)[None])[:, None]


@torch.no_grad()
def label_log_likelihoods(model, encoder: PromptEncoder, prompts: Sequence[Sequence[int]],
                          targets: Sequence[Sequence[int]], precision: str = "fp32") -> torch.Tensor:
    """[records, labels] summed log-probabilities of each label's target after each prompt (float32, CPU)."""
    return label_scores(model, encoder, prompts, targets, precision).cpu()


def label_scores(model, encoder: PromptEncoder, prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]],
                 precision: str = "fp32") -> torch.Tensor:
    """``label_log_likelihoods`` on the model's device, differentiable (the label-choice training objective).
    Row r depends on prompt r alone (blocks never see another row), so per-sample gradients stay per sample."""
    if not prompts or not targets:
        raise ValueError("label scoring needs at least one prompt and one label")
    pack = _Packing.of(max(len(p) for p in prompts), targets)
    ids, pos, real = _rows(encoder, prompts, targets, pack)
    scored = len(pack.block) - pack.prompt_width + 1  # the prompt's last position and every block position
    where = model_device(model)
    with autocast(precision, where.type):
        logits = causal_lm_logits(model, ids.to(where), _as_model_mask(model, pack.mask(real)).to(where),
                                  pos.to(where), scored, real)
    logp = torch.log_softmax(logits.float(), -1)  # index 0 = the prompt's last position
    columns = []
    for i, t in enumerate(targets):
        first = pack.starts[i] - pack.prompt_width + 1  # index of the block's first position
        at = torch.tensor([0] + list(range(first, first + len(t) - 1)), device=logp.device)
        columns.append(logp[:, at, torch.tensor(t, device=logp.device)].sum(1))
    return torch.stack(columns, 1)


def _rows(encoder: PromptEncoder, prompts, targets, pack: _Packing):
    """Packed input ids, position ids and the real-token mask of each row."""
    length, width = len(pack.block), pack.prompt_width
    ids = torch.full((len(prompts), length), encoder.pad_id, dtype=torch.long)
    for start, t in zip(pack.starts, targets):
        ids[:, start:start + len(t) - 1] = torch.tensor(t[:-1])
    pos = torch.zeros((len(prompts), length), dtype=torch.long)
    real = torch.zeros((len(prompts), length), dtype=torch.bool)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):width] = torch.tensor(list(p))
        pos[r, width - len(p):width] = torch.arange(len(p))
        pos[r, width:] = len(p) + pack.offset[width:]
        real[r, width - len(p):] = True
    return ids, pos, real


def _as_model_mask(model, allowed: torch.Tensor) -> torch.Tensor:
    """SDPA-style attention takes the boolean mask; eager attention adds a float mask to its scores."""
    if getattr(model.config, "_attn_implementation", "sdpa") == "eager":
        return torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    return allowed
