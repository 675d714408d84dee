"""What one node works with: its private records and a process-wide cached model.

In simulation a node's records are its partition of the run's data source; on a real
deployment they come only from the node's own ``node_config`` (``data-path``), never from
the server's run config.  The base model is loaded once per process and reused across rounds
(simulation actors serve many nodes; only the adapter weights change between messages).
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from .adapters import get_adapter_arrays
from .config import DataConfig, LoraConfigSection, ModelConfig, RunConfig
from .data import (DEPARTMENTS, DataError, Encoded, Example, LoadedData, PromptEncoder, RecordSpec, generate_triage,
                   load_examples, partition, train_eval_split)
from .model import add_lora, load_base_model, load_tokenizer
from .privacy.ledger import dataset_fingerprint

SYNTHETIC_TRIAGE = "synthetic-triage"


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


def load_data_file(cfg: DataConfig, path: str | Path) -> LoadedData:
    """A data file read with the run's format settings; refused (DataError naming every bad record)
    if any record is bad - the same reader and message as ``fedtune data check``."""
    return load_examples(path, RecordSpec.from_config(cfg))


def simulation_pool(cfg: DataConfig) -> tuple[list[Example], tuple[str, ...]]:
    """All records a simulation splits across its nodes, and their label set."""
    if cfg.source == SYNTHETIC_TRIAGE:
        return generate_triage(cfg.records, cfg.seed), DEPARTMENTS
    data = load_data_file(cfg, cfg.source)
    return data.examples, data.labels


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


_INITIAL: dict[tuple, "OrderedDict[str, np.ndarray]"] = {}


@functools.lru_cache(maxsize=2)
def cached_model(model_cfg: ModelConfig, lora_cfg: LoraConfigSection, seed: int):
    """(peft model, tokenizer, encoder) for this process; reused for every message."""
    tok = load_tokenizer(model_cfg.name)
    model = add_lora(load_base_model(model_cfg), lora_cfg, seed)
    _INITIAL[(model_cfg, lora_cfg, seed)] = get_adapter_arrays(model)
    return model, tok, PromptEncoder(tok, model_cfg.max_length)


def initial_adapter(model_cfg: ModelConfig, lora_cfg: LoraConfigSection, seed: int) -> "OrderedDict[str, np.ndarray]":
    """The adapter a run starts from (A seeded-random, B = 0), as built - the cached model itself later
    holds whatever adapter was loaded into it last."""
    cached_model(model_cfg, lora_cfg, seed)
    return OrderedDict((n, a.copy()) for n, a in _INITIAL[(model_cfg, lora_cfg, seed)].items())


@functools.lru_cache(maxsize=16)
def _cached_node_data(cfg: RunConfig, node_items: tuple) -> NodeData:
    _, _, encoder = cached_model(cfg.model, cfg.lora, cfg.train.seed)
    ex = node_examples(cfg.data, dict(node_items))
    return NodeData(ex.name, encoder.encode_all(ex.train), encoder.encode_all(ex.eval), ex.labels,
                    dataset_fingerprint(ex.train))


def node_data(cfg: RunConfig, node_config: Mapping[str, object]) -> NodeData:
    return _cached_node_data(cfg, tuple(sorted(node_config.items())))
