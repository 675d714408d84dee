"""What one node works with: its private records and a process-wide cached model.

In simulation a node's records are its partition of the run's data source; on a real
deployment they come only from the node's own ``node_config`` (``data-path``), never from
the server's run config.  The base model is loaded once per process and reused across rounds
(simulation actors serve many nodes; only the adapter weights change between messages).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .config import DataConfig, LoraConfigSection, ModelConfig, RunConfig
from .data import DataError, Encoded, Example, PromptEncoder, generate_triage, load_jsonl, partition, train_eval_split
from .model import add_lora, load_base_model, load_tokenizer
from .privacy.ledger import dataset_fingerprint

SYNTHETIC_TRIAGE = "synthetic-triage"


@dataclass(frozen=True)
class NodeData:
    name: str
    train: list[Encoded]
    eval: list[Encoded]
    fingerprint: str  # of the training records: keys the node's privacy ledger


def simulation_pool(cfg: DataConfig) -> list[Example]:
    """All records a simulation splits across its nodes."""
    if cfg.source == SYNTHETIC_TRIAGE:
        return generate_triage(cfg.records, cfg.seed)
    return load_jsonl(cfg.source)


def node_examples(cfg: DataConfig, node_config: Mapping[str, object]) -> tuple[str, list[Example], list[Example]]:
    """(display name, train, eval) for this node, from its own file or its simulation partition."""
    if "data-path" in node_config:
        path = Path(str(node_config["data-path"])).expanduser()
        name = str(node_config.get("name", path.stem))
        records = load_jsonl(path)
        seed = cfg.seed
    elif "partition-id" in node_config:
        pid, n = int(node_config["partition-id"]), int(node_config["num-partitions"])  # type: ignore[arg-type]
        pool = simulation_pool(cfg)
        parts = partition(pool, n, cfg.partition, cfg.alpha, cfg.seed)
        records = [pool[i] for i in parts[pid]]
        name, seed = f"hospital-{pid}", cfg.seed + 1000 + pid
    else:
        raise DataError("this node has no data: set 'data-path' in its node config")
    train, held_out = train_eval_split(records, cfg.eval_fraction, seed)
    return name, train, held_out


@functools.lru_cache(maxsize=2)
def cached_model(model_cfg: ModelConfig, lora_cfg: LoraConfigSection, seed: int):
    """(peft model, tokenizer, encoder) for this process; reused for every message."""
    tok = load_tokenizer(model_cfg.name)
    model = add_lora(load_base_model(model_cfg), lora_cfg, seed)
    return model, tok, PromptEncoder(tok, model_cfg.max_length)


@functools.lru_cache(maxsize=16)
def _cached_node_data(cfg: RunConfig, node_items: tuple) -> NodeData:
    _, _, encoder = cached_model(cfg.model, cfg.lora, cfg.train.seed)
    name, train, held_out = node_examples(cfg.data, dict(node_items))
    return NodeData(name, encoder.encode_all(train), encoder.encode_all(held_out), dataset_fingerprint(train))


def node_data(cfg: RunConfig, node_config: Mapping[str, object]) -> NodeData:
    return _cached_node_data(cfg, tuple(sorted(node_config.items())))
