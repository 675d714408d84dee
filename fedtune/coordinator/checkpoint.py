"""The coordinator's checkpoint: everything needed to continue a run after a crash, in one file.

``<out>/checkpoint.safetensors`` is replaced atomically (``files.atomic_write_bytes``: temp file,
fsync, rename) after every completed round.  It holds the global adapter, the strategy's state
(the FedAvgM velocity), the last completed round, the metrics of every round so far, the run
config it was made with and how the server's randomness continues.  It is a plain safetensors
file (tensors ``adapter/<name>`` and ``strategy/<name>``; everything else JSON in the header's
metadata) with a SHA-256 over all of it, so a truncated or altered file is refused with a
message instead of silently restarting a run.

Randomness: the server draws each round's nodes with ``numpy.random.default_rng([train.seed,
round, attempt])`` - a fresh stream keyed by values the checkpoint holds - so a resumed run samples
exactly what the uninterrupted run would have, with no generator state to carry.  Nodes seed their
non-private training the same way; DP noise and Poisson sampling use fresh OS randomness on
purpose (a reproducible seed would let anyone who knows it subtract the noise).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fedtune.common.config import ConfigError
from fedtune.common.files import atomic_write_bytes

FILE_NAME = "checkpoint.safetensors"
FORMAT = 1
RNG_SCHEME = "numpy.random.default_rng([train.seed, round, attempt]) per round"

# Keys a resumed run may change: how long to go on and how patiently; never what is learned or how.
RESUMABLE_CHANGES = frozenset({
    "federation.rounds", "federation.round-timeout", "federation.node-wait-timeout", "federation.round-retries",
    "secagg.stage-timeout", "train.eval-batch-size", "output.dir", "output.resume",
})


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or damaged; the message says what to do."""


@dataclass
class Checkpoint:
    round: int  # last completed round (0 = the initial adapter was evaluated)
    adapter: "OrderedDict[str, np.ndarray]"
    strategy: "OrderedDict[str, np.ndarray]"
    records: list[dict]  # metrics.jsonl lines of rounds 0..round
    config: dict[str, Any]  # the flat run config the run was started with
    run: dict[str, Any] = field(default_factory=dict)  # run.json metadata (start time, resumes, ...)


def checkpoint_path(out: str | Path) -> Path:
    return Path(out) / FILE_NAME


def _digest(tensors: Mapping[str, np.ndarray], state: Mapping[str, Any]) -> str:
    """SHA-256 over every tensor and every other entry: any change to the file is noticed."""
    h = hashlib.sha256(json.dumps({k: v for k, v in state.items() if k != "sha256"}, sort_keys=True).encode())
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_checkpoint(out: str | Path, ckpt: Checkpoint) -> Path:
    """Replace ``<out>/checkpoint.safetensors`` in one atomic step; a crash leaves the previous one."""
    from safetensors.numpy import save

    tensors = {f"adapter/{n}": np.ascontiguousarray(a, dtype=np.float32) for n, a in ckpt.adapter.items()}
    tensors.update({f"strategy/{n}": np.ascontiguousarray(a, dtype=np.float32) for n, a in ckpt.strategy.items()})
    state = {
        "format": FORMAT, "round": ckpt.round, "adapter_names": list(ckpt.adapter),
        "strategy_names": list(ckpt.strategy), "records": ckpt.records, "config": ckpt.config, "run": ckpt.run,
        "rng": RNG_SCHEME,
    }
    state["sha256"] = _digest(tensors, state)
    path = checkpoint_path(out)
    atomic_write_bytes(path, save(tensors, metadata={"fedtune": json.dumps(state, sort_keys=True)}))
    return path


def load_checkpoint(out: str | Path) -> Checkpoint:
    """Read and verify ``<out>/checkpoint.safetensors``; CheckpointError says what is wrong."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    path = checkpoint_path(out)
    if not Path(out).is_dir():
        raise CheckpointError(f"results folder {out} does not exist (or is not a folder); give the folder of the "
                              "run to resume, e.g. runs/20261122-101500")
    if not path.is_file():
        raise CheckpointError(f"{out} holds no {FILE_NAME}: the run finished no round there yet (or it is not a "
                              "fedtune results folder). Start it again without --resume / output.resume")
    damaged = (f"checkpoint {path} is damaged or truncated; fedtune only ever replaces it with a complete file, so "
               "it was changed by something else (disk full, a copy that did not finish). Restore it from a "
               "backup, or start a new run in another folder")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    try:
        tensors = load(data)
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8:8 + header_len]).get("__metadata__", {})
        state = json.loads(meta["fedtune"])
    except (SafetensorError, ValueError, KeyError, TypeError, OverflowError, MemoryError) as exc:
        raise CheckpointError(f"{damaged} ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fedtune checkpoint of format {FORMAT} (found {state.get('format')!r} "
                              "if it is one): it was written by another fedtune version")
    try:
        if _digest(tensors, state) != state["sha256"]:
            raise CheckpointError(f"{damaged} (its SHA-256 does not match its content)")
        adapter = OrderedDict((n, tensors[f"adapter/{n}"]) for n in state["adapter_names"])
        strategy = OrderedDict((n, tensors[f"strategy/{n}"]) for n in state["strategy_names"])
        ckpt = Checkpoint(int(state["round"]), adapter, strategy, list(state["records"]), dict(state["config"]),
                          dict(state.get("run", {})))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{damaged} (missing or malformed entry: {exc})") from exc
    if ckpt.round < 0 or [r.get("round") for r in ckpt.records] != list(range(ckpt.round + 1)):
        raise CheckpointError(f"{damaged} (its metrics do not cover rounds 0..{ckpt.round})")
    return ckpt


def check_resumable(saved: Mapping[str, Any], current: Mapping[str, Any], done: int) -> None:
    """Refuse to continue a run with settings that change what it learns (only RESUMABLE_CHANGES may differ)."""
    changed = sorted(k for k in set(saved) | set(current)
                     if k not in RESUMABLE_CHANGES and saved.get(k) != current.get(k))
    if changed:
        diffs = "; ".join(f"{k}: checkpoint {saved.get(k)!r}, now {current.get(k)!r}" for k in changed[:6])
        raise ConfigError(
            f"cannot resume with different settings ({diffs}{'; ...' if len(changed) > 6 else ''}). Resume with "
            f"the run's own configuration; only {', '.join(sorted(RESUMABLE_CHANGES - {'output.dir', 'output.resume'}))} "
            "may change"
        )
    rounds = int(current.get("federation.rounds", 0))
    if rounds < done:
        raise ConfigError(f"federation.rounds={rounds} is below the {done} rounds this run already completed; "
                          f"resume with federation.rounds >= {done}")
