"""The adapter every run starts from, decided by the seed and the adapter's names and shapes alone.

Each LoRA A is drawn as PEFT draws it by default (Kaiming-uniform with a = √5, i.e. uniform in
±1/√fan_in) but from a generator seeded by (train.seed, the tensor's name), and each B is zero, so
the start is exactly the base model.  Because no value depends on the base weights or on the order
PEFT happens to initialise modules in, the coordinator builds it from the model's *config* on the
meta device (``adapter_skeleton``): no weight is read, which for a 7-8 B base saves a GPU-sized load
on the coordinator's machine (it needs the real model only to score a central evaluation file); a
party that does load the model gets the same arrays.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
import torch

from fedtune.common.adapters import adapter_parameters
from fedtune.common.config import LoraConfigSection, ModelConfig
from fedtune.common.model import add_lora, resolve_model_path


def lora_start(model, seed: int) -> "OrderedDict[str, np.ndarray]":
    """The starting value of each of ``model``'s LoRA tensors (its weights may be on the meta device)."""
    out = OrderedDict()
    for name, param in adapter_parameters(model).items():
        shape = tuple(param.shape)
        if "lora_A" in name:
            stream = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
            bound = 1.0 / np.sqrt(shape[1])  # fan_in of A (r x in_features)
            out[name] = np.random.default_rng([seed, stream]).uniform(-bound, bound, shape).astype(np.float32)
        else:
            out[name] = np.zeros(shape, dtype=np.float32)
    return out


def adapter_skeleton(model_cfg: ModelConfig, lora_cfg: LoraConfigSection, seed: int):
    """The PEFT model of ``model_cfg`` with its base on the meta device (built from the config, no weight
    read) and only its LoRA tensors real (on the CPU), holding ``lora_start``: enough to name, shape and
    save the adapter (``export_adapter``), not to run it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from fedtune.common.adapters import set_adapter_arrays

    config = AutoConfig.from_pretrained(resolve_model_path(model_cfg.name))
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(config)
    base.requires_grad_(False)
    model = add_lora(base, lora_cfg, seed)
    for module in model.modules():
        for part in ("lora_A", "lora_B"):
            if isinstance(getattr(module, part, None), torch.nn.ModuleDict):
                getattr(module, part).to_empty(device="cpu")
    set_adapter_arrays(model, lora_start(model, seed))
    return model
