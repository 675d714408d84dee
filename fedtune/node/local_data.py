"""What one node trains and evaluates on: its private records, split into train and held-out.

On a real deployment a node's records come only from its own ``node_config`` (``data-path``),
never from the coordinator's run config; a simulated node takes its partition of the run's
record pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from fedtune.common.config import DataConfig, RunConfig
from fedtune.common.data import (DataError, Encoded, Example, PromptEncoder, load_data_file, partition,
                                 simulation_pool, train_eval_split)
from fedtune.node.privacy.ledger import dataset_fingerprint


@dataclass(frozen=True)
class NodeData:
    name: str
    train: list[Encoded]
    eval: list[Encoded]
    labels: tuple[str, ...]  # the label set every node of this run shares (macro-F1); empty if none
    fingerprint: str  # of the training records: keys the node's privacy ledger


@dataclass(frozen=True)
class NodeExamples:
    name: str
    train: list[Example]
    eval: list[Example]
    labels: tuple[str, ...]


def node_examples(cfg: DataConfig, node_config: Mapping[str, object]) -> NodeExamples:
    """This node's train and held-out records, from its own file or its simulation partition."""
    if "data-path" in node_config:
        path = Path(str(node_config["data-path"])).expanduser()
        name = str(node_config.get("name", path.stem))
        data = load_data_file(cfg, path)
        if data.format == "classification" and not cfg.label_list:
            raise DataError("classification data on a deployed node needs data.labels in the run config, so every "
                            "node prompts with the same label list (ask the coordinator to set it)")
        records, labels, seed = data.examples, cfg.label_list, cfg.seed
    elif "partition-id" in node_config:
        pid, n = int(node_config["partition-id"]), int(node_config["num-partitions"])  # type: ignore[arg-type]
        pool, labels = simulation_pool(cfg)
        parts = partition(pool, n, cfg.partition, cfg.alpha, cfg.seed)
        records = [pool[i] for i in parts[pid]]
        name, seed = f"hospital-{pid}", cfg.seed + 1000 + pid
    else:
        raise DataError("this node has no data: set 'data-path' in its node config")
    train, held_out = train_eval_split(records, cfg.eval_fraction, seed)
    return NodeExamples(name, train, held_out, labels)


def load_node_data(cfg: RunConfig, node_config: Mapping[str, object], encoder: PromptEncoder) -> NodeData:
    """This node's records, encoded for the run's model."""
    ex = node_examples(cfg.data, node_config)
    return NodeData(ex.name, encoder.encode_all(ex.train), encoder.encode_all(ex.eval), ex.labels,
                    dataset_fingerprint(ex.train))
