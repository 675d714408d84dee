"""LoRA adapter tensors <-> named numpy arrays: the only thing that crosses the network.

Names and order are fixed by the model's module order, so every party agrees on them;
``set_adapter_arrays`` refuses anything that is not exactly the adapter (names, shapes,
finite values).  Export writes a standard PEFT folder that ``PeftModel.from_pretrained`` loads.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np

from fedtune.common.files import atomic_directory

if TYPE_CHECKING:  # torch is imported where a model is touched: a SecAgg+ stage works on arrays only
    import torch


class AdapterMismatch(ValueError):
    """Received arrays are not this model's LoRA adapter."""


def adapter_parameters(model) -> "OrderedDict[str, torch.nn.Parameter]":
    """Every LoRA parameter (A and B, trained or frozen), in module order: the adapter the global
    model is made of.  Base weights are frozen and excluded; a trainable non-LoRA weight is refused."""
    leaked = [n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]
    if leaked:
        raise AdapterMismatch(f"non-LoRA parameters are trainable and would be sent: {leaked[:3]}")
    return OrderedDict((n, p) for n, p in model.named_parameters() if "lora_" in n)


def trainable_parameters(model) -> "OrderedDict[str, torch.nn.Parameter]":
    """The LoRA parameters local training updates (all of them, or only B under FFA-LoRA)."""
    return OrderedDict((n, p) for n, p in adapter_parameters(model).items() if p.requires_grad)


def trained_names(arrays: Mapping[str, object], freeze_a: bool) -> list[str]:
    """Names of the adapter tensors a round trains and aggregates: all, or only the B matrices
    (FFA-LoRA: every A stays at the shared start, so the sum of B deltas is exactly the sum of B·A)."""
    return [n for n in arrays if not (freeze_a and "lora_A" in n)]


def trained_part(arrays: Mapping[str, np.ndarray], freeze_a: bool) -> "OrderedDict[str, np.ndarray]":
    return OrderedDict((n, arrays[n]) for n in trained_names(arrays, freeze_a))


def get_adapter_arrays(model) -> "OrderedDict[str, np.ndarray]":
    return OrderedDict((n, p.detach().cpu().float().numpy().copy()) for n, p in adapter_parameters(model).items())


def check_arrays(expected: Mapping[str, torch.Tensor | np.ndarray], arrays: Mapping[str, np.ndarray]) -> None:
    """Raise AdapterMismatch unless ``arrays`` has exactly the expected names and shapes, all finite."""
    if list(arrays) != list(expected):
        missing = [n for n in expected if n not in arrays][:3]
        extra = [n for n in arrays if n not in expected][:3]
        raise AdapterMismatch(f"adapter names differ (missing {missing}, unexpected {extra}, or order)")
    for name, arr in arrays.items():
        if tuple(arr.shape) != tuple(expected[name].shape):
            raise AdapterMismatch(f"{name}: shape {tuple(arr.shape)} != expected {tuple(expected[name].shape)}")
        if not np.all(np.isfinite(arr)):
            raise AdapterMismatch(f"{name}: contains NaN or Inf")


def flatten(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """All arrays as one float32 vector, in the mapping's order (the layout every node shares)."""
    return np.concatenate([np.asarray(a, dtype=np.float32).ravel() for a in arrays.values()])


def unflatten(vector: np.ndarray, like: Mapping[str, np.ndarray]) -> "OrderedDict[str, np.ndarray]":
    """Inverse of ``flatten``: names, shapes and dtypes from ``like``."""
    sizes = [int(np.prod(a.shape)) for a in like.values()]
    if vector.size != sum(sizes):
        raise AdapterMismatch(f"vector of {vector.size} values for an adapter of {sum(sizes)}")
    out, pos = OrderedDict(), 0
    for (name, ref), n in zip(like.items(), sizes):
        out[name] = vector[pos:pos + n].reshape(ref.shape).astype(ref.dtype)
        pos += n
    return out


def adapter_hash(arrays: Mapping[str, np.ndarray]) -> bytes:
    """SHA-256 over names, dtypes, shapes and bytes: two nodes agree iff they hold the same adapter."""
    h = hashlib.sha256()
    for name, arr in arrays.items():
        a = np.ascontiguousarray(arr)
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.digest()


def set_adapter_arrays(model, arrays: Mapping[str, np.ndarray]) -> None:
    import torch

    params = adapter_parameters(model)
    check_arrays(params, arrays)
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(torch.from_numpy(np.asarray(arrays[name])).to(p.dtype))


def delta(local: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray],
          names: list[str] | None = None) -> "OrderedDict[str, np.ndarray]":
    """local - base, per tensor of ``names`` (default: all of ``base``): what a node sends."""
    return OrderedDict((n, (local[n] - base[n]).astype(np.float32)) for n in (base if names is None else names))


def apply_delta(base: Mapping[str, np.ndarray], d: Mapping[str, np.ndarray], scale: float = 1.0):
    """base + scale * delta, per tensor (what the server does with the averaged delta)."""
    return OrderedDict((n, (base[n] + np.float32(scale) * d[n]).astype(np.float32)) for n in base)



def export_adapter(model, arrays: Mapping[str, np.ndarray], out_dir: str | Path, meta: Mapping | None = None) -> Path:
    """Write ``arrays`` as a PEFT adapter folder, atomically (temp folder, then rename).

    ``meta`` (e.g. the base ``model.name``) goes to ``fedtune.json`` beside PEFT's files;
    PEFT ignores it, ``fedtune generate`` reads it.
    """
    set_adapter_arrays(model, arrays)
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp)
        if meta is not None:
            (tmp / "fedtune.json").write_text(json.dumps(dict(meta), indent=2, sort_keys=True) + "\n")
    return Path(out_dir)
