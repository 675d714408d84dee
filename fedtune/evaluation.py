"""Held-out evaluation: mean per-sample loss and exact-match accuracy.

Exact match is computed in the same forward pass as the loss: greedy decoding emits exactly
the target (answer + end-of-turn) iff the argmax at every target position is the target token.
This is identical to generating greedily and comparing token sequences, at the cost of one
teacher-forced pass (tested against ``generate`` in tests/test_evaluation.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .data.prompts import Encoded, PromptEncoder
from .model import device
from .objective import per_sample_forward


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    examples: int


@torch.no_grad()
def evaluate(model, encoder: PromptEncoder, data: Sequence[Encoded], batch_size: int, precision: str) -> EvalResult:
    if not data:
        raise ValueError("no evaluation records")
    model.eval()
    loss_sum, correct = 0.0, 0
    # Sort by length so batches pad little; the result does not depend on the order.
    order = sorted(range(len(data)), key=lambda i: len(data[i].prompt_ids) + len(data[i].target_ids))
    for start in range(0, len(order), batch_size):
        items = [data[i] for i in order[start:start + batch_size]]
        fwd = per_sample_forward(model, encoder.collate(items).to(device()), precision)
        loss_sum += fwd.losses.sum().item()
        correct += int(fwd.correct.sum().item())
    return EvalResult(loss_sum / len(data), correct / len(data), len(data))


@torch.no_grad()
def generate(model, tokenizer, encoder: PromptEncoder, messages: Sequence[dict], max_new_tokens: int = 64) -> str:
    """Greedy completion of a chat prompt (used by ``fedtune generate``)."""
    ids = torch.tensor([encoder.encode_prompt(messages)], device=device())
    out = model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
        do_sample=False, eos_token_id=encoder.end_id, pad_token_id=encoder.pad_id, use_cache=True,
    )
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
