"""DP-SGD on the LoRA parameters with Opacus: Poisson sampling, per-sample clipping, Gaussian noise.

``DPStepper`` plugs Opacus's ``PrivacyEngine`` into the local training loop (``node/training.py``):
* batches come from the Poisson sampler of Opacus's ``DPDataLoader`` (each record included
  independently with probability q, so batch sizes vary and can be empty - an empty batch still
  gets its noise);
* per-sample gradients come from Opacus's hooks on the LoRA ``nn.Linear`` layers (the base
  model is frozen and has none), or from ghost clipping (norms only, two backward passes);
* per-sample gradients are up-cast to fp32 before clipping, so the clipping bound holds exactly
  even when the forward pass runs under bf16 autocast;
* noise and sampling use fresh OS randomness, never the run's seed (a known seed would let
  anyone subtract the noise);
* group-level DP (``groups``: each record's patient or customer): Poisson sampling draws whole
  groups, and the per-record gradients of a group are averaged into one before clipping, so each
  group - however many records it has - moves the update by at most C.
The stepper does not account: the node's ledger does, from the plan it checked beforehand.
"""

from __future__ import annotations

import math
import secrets
import warnings
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping
from torch.utils.data import DataLoader, Dataset

from fedtune.common.adapters import trainable_parameters
from fedtune.common.config import TrainConfig
from fedtune.node.optimizer_state import export_moments, restore_moments

MODES = ("hooks", "ghost")


@dataclass(frozen=True)
class DPPlan:
    """One round of DP-SGD on one node, as the accountant sees it."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float

    @property
    def segment(self) -> tuple[float, float, int]:
        return (self.noise_multiplier, self.sample_rate, self.steps)


def poisson_sample_rate(num_records: int, batch_size: int) -> float:
    """Opacus's rule: q = 1 / (batches per epoch) = 1 / ceil(N / B); expected batch ≈ B."""
    return 1.0 / math.ceil(num_records / batch_size)


class _Indices(Dataset):
    """Stands in for the records when Opacus builds its loader: only ``len`` and the item shape
    matter, since batches are drawn from the loader's Poisson sampler (see ``batches``)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return (torch.tensor(i),)


def _secure_generator() -> torch.Generator:
    return torch.Generator().manual_seed(secrets.randbits(63))


class DPStepper:
    def __init__(self, model, num_units: int, cfg: TrainConfig, plan: DPPlan, mode: str = "hooks",
                 groups: np.ndarray | None = None, units_per_batch: int | None = None, moments: dict | None = None):
        """``num_units``: records, or groups when ``groups`` gives each record's group index;
        ``units_per_batch``: the expected batch in those units (default ``cfg.batch_size``);
        ``moments``: AdamW moments carried from the node's last round (``optimizer_state``)."""
        if mode not in MODES:
            raise ValueError(f"unknown DP clipping mode {mode!r}; use one of {MODES}")
        if groups is not None and mode != "hooks":
            raise ValueError("group-level DP needs per-record gradients: use clipping mode 'hooks'")
        if not math.isfinite(plan.noise_multiplier):
            raise ValueError("no finite noise multiplier fits the remaining privacy budget")
        self.mode = mode
        self.members = None if groups is None else [np.flatnonzero(groups == g) for g in range(num_units)]
        self._row_group: torch.Tensor | None = None  # group position of each row of the current batch
        self.named = trainable_parameters(model)
        self.params = list(self.named.values())
        optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        restore_moments(optimizer, self.named, moments)  # before Opacus wraps it: its steps update these moments
        self._adamw = optimizer
        loader = DataLoader(_Indices(num_units), batch_size=units_per_batch or cfg.batch_size,
                            generator=_secure_generator())
        model.train()  # Opacus refuses a module in eval mode
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Opacus warns about secure_mode=False (no torchcsprng)
            engine = PrivacyEngine(accountant="rdp")
            made = engine.make_private(
                module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=plan.noise_multiplier,
                max_grad_norm=plan.max_grad_norm, poisson_sampling=True, grad_sample_mode=mode,
                wrap_model=False, noise_generator=_secure_generator(),
            )
        self.engine = engine  # its accountant counts the optimizer steps actually taken (tests check the ledger)
        self.hooks, self.optimizer, self.loader = made[0], made[1], made[-1]
        actual_q = self.loader.sample_rate
        if not math.isclose(actual_q, plan.sample_rate, rel_tol=1e-12):
            self.close()
            raise RuntimeError(f"Opacus samples at q={actual_q}, but the privacy plan assumed q={plan.sample_rate}")

    def batches(self) -> Iterator[np.ndarray]:
        """Record indices straight from Opacus's Poisson batch sampler (each record independently
        with probability q). Not through the loader's collate: for an empty batch it substitutes
        zero-valued placeholder tensors, which must never be mistaken for record 0."""
        while True:
            for idx in self.loader.batch_sampler:
                units = np.asarray(idx, dtype=np.int64)
                if self.members is None:
                    yield units
                    continue
                rows = [self.members[g] for g in units]  # every record of every sampled group
                sizes = torch.tensor([len(r) for r in rows], dtype=torch.long)
                self._row_group = torch.repeat_interleave(torch.arange(len(rows)), sizes)
                yield np.concatenate(rows) if rows else units

    def _upcast_grad_samples(self) -> None:
        for p in self.params:
            gs = getattr(p, "grad_sample", None)
            if gs is not None and gs.dtype != torch.float32:
                p.grad_sample = gs.float()

    def _per_group(self) -> None:
        """Rows of one group -> one (mean) gradient: Opacus then clips and noises per group."""
        rows = self._row_group
        groups = int(rows.max()) + 1
        counts = torch.bincount(rows, minlength=groups).to(torch.float32)
        for p in self.params:
            gs = p.grad_sample
            merged = torch.zeros((groups, *gs.shape[1:]), dtype=gs.dtype, device=gs.device)
            merged.index_add_(0, rows.to(gs.device), gs)
            p.grad_sample = merged / counts.to(gs.device).view(-1, *([1] * (gs.dim() - 1)))

    def step(self, losses: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            # The frozen base means no *inputs* need gradients; Opacus's hooks still see every LoRA layer.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            if self.mode == "ghost":
                DPTensorFastGradientClipping(self.hooks, self.optimizer, losses, "mean").backward()
            else:
                losses.mean().backward()
        self._upcast_grad_samples()
        if self.members is not None:
            self._per_group()
        self.optimizer.step()

    def step_empty(self) -> None:
        """No record sampled: the update is pure noise, exactly as DP-SGD's analysis assumes."""
        self.optimizer.zero_grad(set_to_none=True)
        for p in self.params:
            if self.mode == "ghost":  # ghost clipping's optimizer adds noise to the clipped sum in p.grad
                p.grad = torch.zeros_like(p)
            else:  # the hooks' optimizer clips and sums per-sample rows: there are none
                p.grad_sample = torch.zeros((0, *p.shape), dtype=torch.float32, device=p.device)
        self.optimizer.step()

    def moments(self) -> dict:
        return export_moments(self._adamw, self.named)

    def __enter__(self) -> "DPStepper":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Remove Opacus's hooks and per-sample state from the model (safe to call twice): the
        model is the node process's cached one, and the next caller must get it clean."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        cleanup = getattr(self.hooks, "cleanup", None)
        if cleanup:
            cleanup()
        for p in self.params:
            for attr in ("grad_sample", "summed_grad", "_forward_counter"):
                if hasattr(p, attr):
                    delattr(p, attr)
            p.grad = None
