"""Examples -> token ids with the prompt masked, and left-padded batches.

The prompt is rendered with the tokenizer's chat template (plain ``role: text`` lines when it
has none) and ends with the assistant header; the target is the completion followed by the
end-of-turn token, exactly what greedy generation must emit.  Left padding puts every target
at the end of its row, so the loss needs logits for the last few positions only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from fedtune.common.data.records import Example


@dataclass(frozen=True)
class Encoded:
    prompt_ids: tuple[int, ...]
    target_ids: tuple[int, ...]
    truncated: bool = False


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, L], left-padded
    attention_mask: torch.Tensor  # [B, L]
    position_ids: torch.Tensor  # [B, L], as if unpadded
    target_mask: torch.Tensor  # [B, L] bool, True on target tokens
    max_target: int  # longest target in the batch

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device) -> "Batch":
        return Batch(
            self.input_ids.to(device), self.attention_mask.to(device), self.position_ids.to(device),
            self.target_mask.to(device), self.max_target,
        )


class PromptEncoder:
    def __init__(self, tokenizer, max_length: int):
        self.tok = tokenizer
        self.max_length = max_length
        self.end_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.end_id

    def render_prompt(self, messages: Sequence[dict]) -> str:
        if getattr(self.tok, "chat_template", None):
            return self.tok.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "

    def encode_prompt(self, messages: Sequence[dict]) -> list[int]:
        return self.tok(self.render_prompt(messages), add_special_tokens=False)["input_ids"]

    def encode(self, ex: Example) -> Encoded:
        target = self.tok(ex.completion, add_special_tokens=False)["input_ids"] + [self.end_id]
        target = target[: self.max_length - 1]
        prompt = self.encode_prompt(ex.messages)
        budget = self.max_length - len(target)
        truncated = len(prompt) > budget
        if truncated:  # keep the end of the prompt: the assistant header and the latest turn
            prompt = prompt[-budget:]
        return Encoded(tuple(prompt), tuple(target), truncated)

    def reference(self, e: Encoded) -> str:
        """The record's answer as text (its target without the end-of-turn token)."""
        return self.tok.decode(e.target_ids, skip_special_tokens=True).strip()

    def encode_all(self, examples: Sequence[Example]) -> list[Encoded]:
        return [self.encode(e) for e in examples]

    def collate(self, items: Sequence[Encoded]) -> Batch:
        rows = [list(e.prompt_ids) + list(e.target_ids) for e in items]
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(rows), length), dtype=torch.long)
        tmask = torch.zeros((len(rows), length), dtype=torch.bool)
        for i, (row, e) in enumerate(zip(rows, items)):
            ids[i, length - len(row):] = torch.tensor(row)
            attn[i, length - len(row):] = 1
            tmask[i, length - len(e.target_ids):] = True
        pos = (attn.cumsum(1) - 1).clamp(min=0)
        return Batch(ids, attn, pos, tmask, max(len(e.target_ids) for e in items))
