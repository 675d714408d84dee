"""The one owner of loaded models in a process: base model + LoRA, loaded once per spec.

Loading a base model takes seconds and hundreds of MB, so a process keeps it between Flower
messages (a simulation actor serves many nodes; only the adapter changes).  A cached model is
never handed out as it happens to be: ``holding`` loads the adapter the caller names before
returning it, and ``initial_adapter`` returns a fresh copy of the adapter as first built.  So
what one caller trained can never leak into another caller's training or evaluation.

Each party owns its own cache: the node process one (``node/process_cache.py``), the
coordinator and the in-process baselines one each.  Not thread-safe: one caller at a time.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from fedtune.common.adapter_start import adapter_skeleton, lora_start
from fedtune.common.adapters import set_adapter_arrays
from fedtune.common.config import LoraConfigSection, ModelConfig, RunConfig
from fedtune.common.data import PromptEncoder
from fedtune.common.model import add_lora, load_base_model, load_tokenizer

Arrays = "OrderedDict[str, np.ndarray]"


@dataclass(frozen=True)
class ModelSpec:
    """What identifies a loaded model: the base model, the LoRA shape and the seed of LoRA's A."""

    model: ModelConfig
    lora: LoraConfigSection
    seed: int

    @classmethod
    def of(cls, cfg: RunConfig) -> "ModelSpec":
        return cls(cfg.model, cfg.lora, cfg.train.seed)


@dataclass
class _Loaded:
    model: object  # peft.PeftModel
    encoder: PromptEncoder
    initial: Arrays  # the adapter as built (A seeded-random, B = 0): never handed out itself


class ModelCache:
    """Models of this owner, at most ``capacity`` at once (least recently used goes first)."""

    def __init__(self, capacity: int = 2):
        if capacity < 1:
            raise ValueError("a model cache holds at least one model")
        self._capacity = capacity
        self._loaded: "OrderedDict[ModelSpec, _Loaded]" = OrderedDict()
        self._skeletons: dict[ModelSpec, object] = {}  # adapters built without loading the model

    def _get(self, spec: ModelSpec) -> _Loaded:
        if spec in self._loaded:
            self._loaded.move_to_end(spec)
            return self._loaded[spec]
        tok = load_tokenizer(spec.model.name)
        model = add_lora(load_base_model(spec.model), spec.lora, spec.seed, spec.model.gradient_checkpointing)
        start = lora_start(model, spec.seed)
        set_adapter_arrays(model, start)
        entry = _Loaded(model, PromptEncoder(tok, spec.model.max_length), start)
        self._loaded[spec] = entry
        while len(self._loaded) > self._capacity:
            self._loaded.popitem(last=False)
        return entry

    def encoder(self, spec: ModelSpec) -> PromptEncoder:
        """The prompt encoder (tokenizer + template) of this model: holds no adapter state."""
        return self._get(spec).encoder

    def initial_adapter(self, spec: ModelSpec) -> Arrays:
        """A fresh copy of the adapter a run starts from (LoRA B = 0: exactly the base model); built from the
        model's config alone unless the model is loaded already (``adapter_start.py``: the same arrays)."""
        if spec in self._loaded:
            return OrderedDict((n, a.copy()) for n, a in self._loaded[spec].initial.items())
        return lora_start(self.skeleton(spec), spec.seed)

    def skeleton(self, spec: ModelSpec):
        """A PEFT model that can hold and save this spec's adapter: the loaded model if there is one, else one
        whose base weights are never read (``adapter_skeleton``)."""
        if spec in self._loaded:
            return self._loaded[spec].model
        if spec not in self._skeletons:
            self._skeletons[spec] = adapter_skeleton(spec.model, spec.lora, spec.seed)
        return self._skeletons[spec]

    def holding(self, spec: ModelSpec, adapter: Mapping[str, np.ndarray]):
        """(model, encoder), the model holding exactly ``adapter`` (refused unless it is this model's
        LoRA adapter: names, shapes, finite values).  Valid until the next call on this cache."""
        entry = self._get(spec)
        set_adapter_arrays(entry.model, adapter)
        return entry.model, entry.encoder
