"""A node's AdamW moments, carried from one of its rounds to its next (``train.carry-optimizer-state``).

With a fresh AdamW every round, a round's first step moves each coordinate by lr·g/|g| - its sign.
Under DP-SGD, where a coordinate's noise is larger than its signal, that step is mostly noise, and with
few local steps per round most of a run's steps are such first steps.  Carried moments average the
noised gradients of the node's earlier rounds as one centralized AdamW run does across its steps.

Privacy: the moments are computed only from DP-SGD's noised, clipped updates (post-processing: no cost
in ε), and they stay on the node: in Flower's ``Context.state``, which the node's SuperNode (or the
simulation's node) keeps and never sends; ``replies.py`` decides what leaves, and they are not in it.
A node that restarts (or a resumed run) starts with fresh moments, as before this option existed.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

import numpy as np
import torch
from flwr.app import RecordDict

from fedtune.common.messages import from_record, to_record

STATE_KEY = "fedtune.optimizer-moments"
_MOMENTS = ("exp_avg", "exp_avg_sq")
_STEP = "step"


def export_moments(optimizer: torch.optim.Optimizer, params: Mapping[str, torch.nn.Parameter]) -> "OrderedDict[str, np.ndarray]":
    """The AdamW state of ``params`` (name -> parameter) as named arrays: '<name>/exp_avg', ... and '<name>/step'."""
    out: "OrderedDict[str, np.ndarray]" = OrderedDict()
    for name, p in params.items():
        state = optimizer.state.get(p)
        if not state:  # never stepped (e.g. a zero-step round): nothing to carry for it
            continue
        for key in _MOMENTS:
            out[f"{name}/{key}"] = state[key].detach().to("cpu", torch.float32).numpy().copy()
        out[f"{name}/{_STEP}"] = np.asarray([float(state[_STEP])], dtype=np.float64)
    return out


def restore_moments(optimizer: torch.optim.Optimizer, params: Mapping[str, torch.nn.Parameter],
                    moments: Mapping[str, np.ndarray] | None) -> bool:
    """Load carried moments into a fresh AdamW before its first step.  All or nothing: when any parameter's
    moments are missing or shaped differently (the run changed its adapter), the optimizer stays fresh."""
    if not moments:
        return False
    for name, p in params.items():
        for key in _MOMENTS:
            a = moments.get(f"{name}/{key}")
            if a is None or tuple(a.shape) != tuple(p.shape) or not np.isfinite(a).all():
                return False
        if f"{name}/{_STEP}" not in moments:
            return False
    if len(moments) != 3 * len(params):  # moments of parameters this run does not train
        return False
    for name, p in params.items():
        optimizer.state[p] = {
            _STEP: torch.tensor(float(moments[f"{name}/{_STEP}"][0]), dtype=torch.float32),
            **{key: torch.as_tensor(moments[f"{name}/{key}"], dtype=torch.float32).to(p.device).clone()
               for key in _MOMENTS},
        }
    return True


def load(state: RecordDict) -> "OrderedDict[str, np.ndarray] | None":
    """This node's carried moments from its Flower ``Context.state`` (None when there are none)."""
    return from_record(state[STATE_KEY]) if STATE_KEY in state else None


def save(state: RecordDict, moments: Mapping[str, np.ndarray] | None) -> None:
    """Keep ``moments`` for the node's next round (None or empty: forget them)."""
    if moments:
        state[STATE_KEY] = to_record(moments)
    elif STATE_KEY in state:
        del state[STATE_KEY]
