"""What one node trains and evaluates on: its private records, split into train and held-out.

On a real deployment a node's records come only from its own ``node_config`` (``data-path``),
never from the coordinator's run config, and the split into training and held-out records is
the node's too (its ``eval-fraction`` and ``split-seed``), so the coordinator cannot shrink or
choose the held-out set.  A simulated node takes its partition of the run's record pool.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from fedtune.common.config import DataConfig, RunConfig
from fedtune.common.data import (DataError, Encoded, Example, PromptEncoder, load_data_file, load_jsonl, partition,
                                 simulation_pool, train_eval_split)
from fedtune.node.policy import NodePolicy, node_name
from fedtune.node.privacy.ledger import dataset_fingerprint


@dataclass(frozen=True)
class NodeData:
    name: str
    train: list[Encoded]
    eval: list[Encoded]
    labels: tuple[str, ...]  # the label set every node of this run shares (macro-F1); empty if none
    source: str  # what the node's privacy ledger is tied to (its data-path; a simulated split)
    raw_fingerprint: str  # of the source's raw contents (finds the ledger again if the file moves)
    groups: np.ndarray | None = None  # group index of each training record (group-level DP)

    @property
    def units(self) -> int:
        """Privacy units: records, or the groups (patients, customers) they belong to."""
        return len(self.train) if self.groups is None else int(self.groups.max()) + 1


@dataclass(frozen=True)
class NodeExamples:
    name: str
    train: list[Example]
    eval: list[Example]
    labels: tuple[str, ...]
    source: str
    raw_fingerprint: str


def raw_fingerprint(path: Path) -> str:
    """SHA-256 of a data file's bytes (of every file, in order, for a datasets folder)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


@functools.lru_cache(maxsize=2)
def simulated_split(cfg: DataConfig, num_nodes: int, stamp: tuple | None) -> tuple[tuple[Example, ...], tuple[str, ...],
                                                                                 tuple[np.ndarray, ...]]:
    """A simulation's record pool, label set and partition, built once per process and run, not per message:
    with 1,000 nodes, rebuilding the whole pool to take one node's share made every message cost O(population).
    Pure in its arguments (``stamp``: the source file's size and mtime, so an edited file is read again)."""
    pool, labels = simulation_pool(cfg)
    return tuple(pool), labels, tuple(partition(pool, num_nodes, cfg.partition, cfg.alpha, cfg.seed))


def _source_stamp(source: str) -> tuple | None:
    """(size, mtime) of a data file, or of every file in a datasets folder: changes when the data does."""
    path = Path(source).expanduser()
    try:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        return tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    except OSError:
        return None  # the built-in synthetic notes (or a missing file: simulation_pool says so)


def data_stamp(node_config: Mapping[str, object]) -> tuple | None:
    """What identifies the current contents of a deployed node's data-path (None for a simulated node), so a
    process that keeps a node's records (a warm runner) reads them again once the operator changes the file."""
    return _source_stamp(str(node_config["data-path"])) if "data-path" in node_config else None


def node_examples(cfg: DataConfig, node_config: Mapping[str, object], policy: NodePolicy | None = None) -> NodeExamples:
    """This node's train and held-out records, from its own file or its simulation partition."""
    policy = policy or NodePolicy.of(node_config, RunConfig(data=cfg))
    if "data-path" in node_config:
        path = Path(str(node_config["data-path"])).expanduser()
        if policy.unit == "group":  # the node's own group field, whatever the run names
            cfg = dataclasses.replace(cfg, group_column=policy.group_column)
        data = load_data_file(cfg, path)
        if data.format == "classification" and not cfg.label_list:
            raise DataError("classification data on a deployed node needs data.labels in the run config, so every "
                            "node prompts with the same label list (ask the coordinator to set it)")
        records, labels = data.examples, cfg.label_list
        source, raw = os.path.realpath(path), raw_fingerprint(path)
    elif "partition-id" in node_config:
        pid, n = int(node_config["partition-id"]), int(node_config["num-partitions"])  # type: ignore[arg-type]
        pool, labels, parts = simulated_split(cfg, n, _source_stamp(cfg.source))
        records = [pool[i] for i in parts[pid]]
        source = raw = ""
    else:
        raise DataError("this node has no data: set 'data-path' in its node config")
    train, held_out = train_eval_split(records, policy.eval_fraction, policy.split_seed)
    if "partition-id" in node_config and "data-path" not in node_config:
        train = train + audit_canaries(cfg, int(node_config["partition-id"]))  # type: ignore[arg-type]
    if not source:  # a simulated node: its ledger follows its training split (a per-run state dir anyway)
        source = raw = f"simulated:{dataset_fingerprint(train)}"
    return NodeExamples(node_name(node_config), train, held_out, labels, source, raw)


def audit_canaries(cfg: DataConfig, partition_id: int) -> list[Example]:
    """A privacy audit's inserted canaries, for the simulated node that trains on them (never held out, so
    they are scored only by the audit). Only simulated nodes read them: a deployed node's records are its
    own data-path's, whatever a run config names."""
    if not cfg.canaries or partition_id != cfg.canary_node:
        return []
    return load_jsonl(cfg.canaries)


def group_indices(train: list[Example]) -> np.ndarray:
    """Each record's group as an index 0..G-1 (order of first appearance)."""
    missing = [i for i, ex in enumerate(train) if ex.group is None]
    if missing:
        raise DataError(f"group-level privacy needs a group for every record; {len(missing)} training records "
                        "have none (set the group column)")
    ids: dict[str, int] = {}
    return np.array([ids.setdefault(str(ex.group), len(ids)) for ex in train], dtype=np.int64)


def load_node_data(cfg: RunConfig, node_config: Mapping[str, object], encoder: PromptEncoder,
                   policy: NodePolicy | None = None) -> NodeData:
    """This node's records, encoded for the run's model."""
    policy = policy or NodePolicy.of(node_config, cfg)
    ex = node_examples(cfg.data, node_config, policy)
    groups = group_indices(ex.train) if policy.effective(cfg).unit == "group" else None
    return NodeData(ex.name, encoder.encode_all(ex.train), encoder.encode_all(ex.eval), ex.labels, ex.source,
                    ex.raw_fingerprint, groups)
