"""Split one pool of examples across simulated nodes, and each node's share into train/eval."""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence, TypeVar

import numpy as np

from fedtune.common.data.records import Example

T = TypeVar("T")


def label_skew_partition(labels: Sequence[str | None], num_nodes: int, alpha: float, seed: int) -> list[list[int]]:
    """Dirichlet(alpha) label skew: each label's records are divided among nodes by proportions
    drawn from Dir(alpha).  Small alpha gives each node a few dominant labels.  Draws are
    repeated (same seeded stream) until every node holds at least ~10% of an even share.
    """
    rng = np.random.default_rng(seed)
    by_label: dict[str | None, list[int]] = defaultdict(list)
    for i, lab in enumerate(labels):
        by_label[lab].append(i)
    min_size = max(1, len(labels) // (num_nodes * 10))
    for _ in range(100):
        parts: list[list[int]] = [[] for _ in range(num_nodes)]
        for lab in sorted(by_label, key=str):
            idx = np.array(by_label[lab])
            rng.shuffle(idx)
            props = rng.dirichlet(np.full(num_nodes, alpha))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
            for node, chunk in enumerate(np.split(idx, cuts)):
                parts[node].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [sorted(p) for p in parts]
    raise ValueError(
        f"could not give every one of {num_nodes} nodes at least {min_size} records with alpha={alpha}; "
        "raise data.alpha or data.records"
    )


def iid_partition(n: int, num_nodes: int, seed: int) -> list[list[int]]:
    idx = np.random.default_rng(seed).permutation(n)
    return [sorted(chunk.tolist()) for chunk in np.array_split(idx, num_nodes)]


def quantity_skew_partition(n: int, num_nodes: int, alpha: float, seed: int) -> list[list[int]]:
    """Quantity skew: node sizes proportional to Dirichlet(alpha) draws (labels stay IID), every
    node keeping at least ~10% of an even share (so each can hold out evaluation records)."""
    rng = np.random.default_rng(seed)
    min_size = max(2, n // (num_nodes * 10))
    if min_size * num_nodes > n:
        raise ValueError(f"{n} records are too few for {num_nodes} nodes of at least {min_size} records")
    props = rng.dirichlet(np.full(num_nodes, alpha))
    sizes = min_size + np.floor(props * (n - min_size * num_nodes)).astype(int)
    sizes[np.argmax(props)] += n - int(sizes.sum())  # rounding remainder to the largest node
    idx = rng.permutation(n)
    return [sorted(chunk.tolist()) for chunk in np.split(idx, np.cumsum(sizes)[:-1])]


def group_partition(groups: Sequence[str | None], num_nodes: int) -> list[list[int]]:
    """Natural groups (e.g. hospital id): a group is never split; groups go, largest first, to the
    node holding the fewest records so far (deterministic: ties by group name, then node index)."""
    if any(g is None for g in groups):
        raise ValueError("partition 'group' needs every record to have a group (data.group-column)")
    by_group: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        by_group[str(g)].append(i)
    if len(by_group) < num_nodes:
        raise ValueError(f"{len(by_group)} groups cannot fill {num_nodes} nodes: simulate at most {len(by_group)} nodes "
                         "or use another data.partition")
    parts: list[list[int]] = [[] for _ in range(num_nodes)]
    for g in sorted(by_group, key=lambda k: (-len(by_group[k]), k)):
        smallest = min(range(num_nodes), key=lambda n: (len(parts[n]), n))
        parts[smallest].extend(by_group[g])
    return [sorted(p) for p in parts]


def partition(examples: Sequence[Example], num_nodes: int, kind: str, alpha: float, seed: int) -> list[list[int]]:
    if num_nodes < 1:
        raise ValueError("num_nodes must be >= 1")
    if len(examples) < num_nodes:
        raise ValueError(f"{len(examples)} records cannot be split across {num_nodes} nodes")
    if kind == "iid":
        return iid_partition(len(examples), num_nodes, seed)
    if kind == "label-skew":
        return label_skew_partition([e.label for e in examples], num_nodes, alpha, seed)
    if kind == "quantity-skew":
        return quantity_skew_partition(len(examples), num_nodes, alpha, seed)
    if kind == "group":
        return group_partition([e.group for e in examples], num_nodes)
    raise ValueError(f"unknown partition kind {kind!r}")


def train_eval_split(items: Sequence[T], eval_fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Shuffle with ``seed`` and hold out ``eval_fraction`` (at least one record each side)."""
    if len(items) < 2:
        raise ValueError(f"need at least 2 records to hold some out for evaluation, got {len(items)}")
    order = np.random.default_rng(seed).permutation(len(items))
    n_eval = min(len(items) - 1, max(1, round(len(items) * eval_fraction)))
    return [items[i] for i in order[n_eval:]], [items[i] for i in order[:n_eval]]
