"""Hidden states below the adapted layers, computed once per record.

With LoRA on the top N layers only (``lora.top-layers``), every layer below them is frozen base
weights, so a record's hidden states where the adapter starts never change during a run.  Training
samples a record again in later steps and rounds, and evaluation scores the same held-out records
every round: this cache runs the frozen layers once per record, and later forwards run only the
adapted layers (the quickstart: 8 of 30).  It is exact - the cached states are what the full
forward computes (``tests/test_frozen_prefix.py`` compares logits and per-sample gradients) - and
bounded: least recently used rows go first.

A row is keyed by a digest of its real tokens, their positions and the attention pattern among
them: a real token's hidden state depends on nothing else, since padding is never attended.  The
states stay in the process that holds the records, like the records themselves.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch

ATTRIBUTE = "_fedtune_frozen_prefix"
DEFAULT_MAX_BYTES = 1 << 30  # ~4,000 quickstart records (SmolLM2: 576 values per token, ~120 tokens a row)
SUPPORTED = ("llama",)  # decoder layout this module drives by hand (embed, rotary, layers, norm, lm_head)


class FrozenPrefix:
    """Cached states after ``layers[:first_adapted]`` of ``causal_lm`` (a ``*ForCausalLM`` under the adapter)."""

    def __init__(self, causal_lm, first_adapted: int, max_bytes: int = DEFAULT_MAX_BYTES):
        self._lm, self._k, self._max = causal_lm, first_adapted, max_bytes
        self._rows: "OrderedDict[bytes, torch.Tensor]" = OrderedDict()
        self._bytes = 0
        self.hits = self.misses = 0

    def logits(self, input_ids, attention_mask, position_ids, logits_to_keep: int, real: torch.Tensor):
        """The causal LM's logits of the last ``logits_to_keep`` positions, as ``model(...)`` would return them."""
        real = real.to(input_ids.device)
        on_cpu = [t.cpu() for t in (input_ids, position_ids, attention_mask, real)]  # one copy, not one per row
        precision = _precision(input_ids.device.type)
        keys = [_row_key(*(t[r] for t in on_cpu), precision) for r in range(len(input_ids))]
        for key in keys:
            if key in self._rows:
                self._rows.move_to_end(key)  # this batch's rows are the last ones eviction reaches
        missing = {k: r for r, k in reversed(list(enumerate(keys))) if k not in self._rows}
        self.hits, self.misses = self.hits + len(keys) - len(missing), self.misses + len(missing)
        if missing:
            self._fill(missing, len(set(keys)), input_ids, attention_mask, position_ids, real)
        inner = self._lm.model
        hidden = inner.embed_tokens.weight.new_zeros(*input_ids.shape, inner.config.hidden_size)
        for r, key in enumerate(keys):  # padding stays 0: never attended, its outputs never read
            hidden[r, real[r]] = self._rows[key].to(hidden.device, hidden.dtype)
        hidden = _run_layers(inner, inner.layers[self._k:], hidden, attention_mask, position_ids)
        return self._lm.lm_head(inner.norm(hidden)[:, -logits_to_keep:])

    @torch.no_grad()
    def _fill(self, missing: dict, in_batch: int, input_ids, attention_mask, position_ids, real) -> None:
        """Run the frozen layers on the rows not cached yet; states are kept on the CPU (spares GPU memory)."""
        inner = self._lm.model
        rows = torch.tensor(list(missing.values()), device=input_ids.device)
        hidden = _run_layers(inner, inner.layers[:self._k], inner.embed_tokens(input_ids[rows]),
                             attention_mask[rows], position_ids[rows])
        for i, (key, r) in enumerate(missing.items()):
            state = hidden[i, real[r]].detach().to("cpu", copy=True)
            self._rows[key] = state
            self._bytes += state.numel() * state.element_size()
        while self._bytes > self._max and len(self._rows) > in_batch:  # never this batch's own rows
            _, old = self._rows.popitem(last=False)
            self._bytes -= old.numel() * old.element_size()


def _run_layers(inner, layers, hidden, attention_mask, position_ids):
    """``layers`` of a decoder (a Llama-style ``*Model``) exactly as its own ``forward`` runs them."""
    from transformers.masking_utils import create_causal_mask

    mask = create_causal_mask(config=inner.config, inputs_embeds=hidden, attention_mask=attention_mask, cache=None,
                              position_ids=position_ids)
    rotary = inner.rotary_emb(hidden, position_ids=position_ids)
    for layer in layers:
        hidden = layer(hidden, attention_mask=mask, position_embeddings=rotary, position_ids=position_ids, cache=None,
                       use_cache=False)
    return hidden


def _precision(device_type: str) -> torch.dtype:
    """The compute precision a forward on ``device_type`` runs in now (autocast's dtype, else fp32)."""
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else torch.float32


def _row_key(ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, real: torch.Tensor,
             precision: torch.dtype) -> bytes:
    """Digest of what a row's real hidden states depend on: tokens, positions, who attends whom, precision
    (rows on the CPU)."""
    digest = hashlib.blake2b(f"{mask.dim()}:{precision}".encode(), digest_size=16)  # the mask's kind too
    digest.update(ids[real].numpy().tobytes())
    digest.update(positions[real].numpy().tobytes())
    if mask.dim() == 3:  # a 4-D mask's row [1, L, L]: the pattern among real positions (bool or additive float)
        allowed = mask[0] if mask.dtype == torch.bool else mask[0] == 0
        digest.update(allowed[real][:, real].numpy().tobytes())
    return digest.digest()


def attach(peft_model, first_adapted: int, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    """Give ``peft_model`` a frozen-prefix cache when its architecture and settings allow one exactly: layers below
    ``first_adapted`` hold no trainable weight and no randomness (attention dropout 0)."""
    causal_lm = peft_model.get_base_model()
    config = causal_lm.config
    if first_adapted <= 0 or getattr(config, "model_type", "") not in SUPPORTED or max_bytes <= 0:
        return
    if getattr(config, "attention_dropout", 0.0):
        return
    lower = causal_lm.model.layers[:first_adapted]
    if any(p.requires_grad for p in lower.parameters()) or causal_lm.model.embed_tokens.weight.requires_grad:
        return
    setattr(peft_model, ATTRIBUTE, FrozenPrefix(causal_lm, first_adapted, max_bytes))


def of(model) -> FrozenPrefix | None:
    return getattr(model, ATTRIBUTE, None)


def causal_lm_logits(model, input_ids, attention_mask, position_ids, logits_to_keep: int,
                     real: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of the last ``logits_to_keep`` positions: through the frozen-prefix cache where ``model`` has one,
    else the model's own forward.  ``real`` marks real tokens (default: a 2-D ``attention_mask``)."""
    prefix = of(model)
    if prefix is None:
        return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
                     logits_to_keep=logits_to_keep).logits
    return prefix.logits(input_ids, attention_mask, position_ids, logits_to_keep,
                         attention_mask.bool() if real is None else real)
