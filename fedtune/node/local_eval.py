"""One node's evaluation of an adapter it is sent, on the node's terms.

* on the node's own held-out records (its split, never one the coordinator chose), and only if
  there are at least the node's ``min-eval-records`` of them (metrics are averages over them);
* at most once per adapter: the node keeps the released metrics of every adapter it evaluated
  (``evaluations.json`` in its state dir) and answers a repeated request with them, so asking
  again - in this run or a later one - reveals nothing new;
* per-label counts (a held-out label histogram) only where the node's policy releases them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from fedtune.common.adapters import adapter_hash
from fedtune.common.config import RunConfig
from fedtune.common.evaluation import evaluate
from fedtune.common.files import atomic_write_text, exclusive_lock
from fedtune.node.policy import STATE_LOCK_TIMEOUT, NodePolicy, PolicyRefusal
from fedtune.node.process_cache import NODE_PROCESS, NodeCache

MEMO = "evaluations.json"
LABEL_COUNTS = ("eval_label_tp", "eval_label_fp", "eval_label_fn")


def evaluate_round(cfg: RunConfig, node_config: Mapping, run_id: int, adapter: Mapping[str, np.ndarray],
                   cache: NodeCache = NODE_PROCESS) -> tuple[str, dict]:
    """(node name, the metrics this node releases for ``adapter``)."""
    policy = NodePolicy.of(node_config, cfg)
    model, encoder, data = cache.prepare(cfg, node_config, adapter)
    if len(data.eval) < policy.min_eval_records:
        raise PolicyRefusal(f"this node evaluates on at least {policy.min_eval_records} held-out records and has "
                            f"{len(data.eval)} (node config: min-eval-records, eval-fraction)")
    state = policy.state_dir_for(cfg, data.name, run_id)
    key = adapter_hash(adapter).hex()
    with exclusive_lock(state / f"{MEMO}.lock", STATE_LOCK_TIMEOUT, "evaluation memo"):
        memo = _read(state / MEMO)
        if key not in memo:
            start = time.perf_counter()
            result = evaluate(model, encoder, data.eval, cfg.train.eval_batch_size, cfg.model.precision, data.labels,
                              cfg.train.eval_max_new_tokens, cfg.train.eval_method)
            # the evaluation's own seconds (no model load, no messaging): what benchmarks set against round time
            memo[key] = {**release(result.to_metrics(), policy), "eval_seconds": time.perf_counter() - start}
            atomic_write_text(state / MEMO, json.dumps(memo, sort_keys=True) + "\n")
    return data.name, memo[key]


def release(metrics: dict, policy: NodePolicy) -> dict:
    """What leaves the node of an evaluation: per-label counts only where its policy says so."""
    return {k: v for k, v in metrics.items() if policy.release_label_counts or k not in LABEL_COUNTS}


def _read(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:  # only fedtune writes it, atomically; never guess around it
        raise PolicyRefusal(f"{path} is unreadable ({type(exc).__name__}); restore it, or remove it knowingly "
                            "(it lists the adapters this node has already evaluated)") from exc
