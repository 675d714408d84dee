"""The coordinator's Flower ServerApp: drives rounds over the Grid, aggregates LoRA deltas only.

Round 0 evaluates the initial adapter (LoRA B = 0, identical to the base model) so the gain
is visible; each round then samples nodes, collects their deltas, aggregates them into a
weighted sum, lets the strategy step the global adapter, and evaluates it on every node's
held-out records.  Results: ``metrics.jsonl``, ``report.md`` and ``adapter/`` in the out dir.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from logging import INFO, WARNING
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from .adapters import AdapterMismatch, check_arrays, export_adapter, get_adapter_arrays
from .config import RunConfig
from .messages import error_text, exchange, from_record, to_record, wait_for_nodes
from .data.synthetic import INSTRUCTION as TRIAGE_INSTRUCTION
from .node import SYNTHETIC_TRIAGE, cached_model
from .report import RunRecorder
from .strategy import FedAvg, weighted_sum

app = ServerApp()


def results_dir(cfg: RunConfig) -> Path:
    if cfg.output.dir:
        return Path(cfg.output.dir).expanduser().resolve()
    return (Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")).resolve()


def _weighted(nodes: dict, key: str, weight: str) -> float | None:
    pairs = [(n[key], n[weight]) for n in nodes.values() if key in n and n.get(weight)]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else None


def adapter_meta(cfg: RunConfig) -> dict:
    """What ``fedtune generate`` needs to use the adapter as it was trained."""
    meta: dict = {"model.name": cfg.model.name, "data.source": cfg.data.source}
    if cfg.data.source == SYNTHETIC_TRIAGE:
        meta["system"] = TRIAGE_INSTRUCTION
    return meta


class Coordinator:
    """State of one federated run on the server side."""

    def __init__(self, grid: Grid, cfg: RunConfig, out: Path):
        self.grid, self.cfg, self.out = grid, cfg, out
        self.model, _, _ = cached_model(cfg.model, cfg.lora, cfg.train.seed)
        self.global_arrays = get_adapter_arrays(self.model)
        self.strategy = FedAvg(cfg.federation.server_lr)

    def _send(self, node_ids, message_type: str, rnd: int, nodes: dict, on_ok) -> None:
        content = lambda: RecordDict({  # noqa: E731 - each message needs its own record
            "adapter": to_record(self.global_arrays), "config": ConfigRecord({"round": rnd}),
        })
        msgs = [Message(content(), dst_node_id=n, message_type=message_type, group_id=str(rnd)) for n in node_ids]
        stage = "train" if message_type == MessageType.TRAIN else "eval"

        def handle(reply: Message) -> None:
            nid = str(reply.metadata.src_node_id)
            entry = nodes.setdefault(nid, {})
            if reply.has_error():
                entry.update(status="error", error=f"{stage}: {error_text(reply)}")
                log(WARNING, "[round %d] node %s failed %s: %s", rnd, nid, stage, entry["error"])
                return
            info = reply.content["info"]
            entry["name"] = str(info["name"])
            entry.update({k: v for k, v in reply.content["metrics"].items()})
            status = str(info["status"])
            if status != "ok":  # e.g. the node's privacy budget is spent: it declined, the round goes on
                entry["status"] = status
                log(WARNING, "[round %d] %s declined %s: %s (epsilon %.3f of its budget %.3f)", rnd, entry["name"],
                    stage, status, entry.get("epsilon", float("nan")), entry.get("max_epsilon", float("nan")))
                return
            entry.setdefault("status", "ok")
            on_ok(reply, entry)

        replies = exchange(self.grid, msgs, self.cfg.federation.round_timeout, handle)
        answered = {str(r.metadata.src_node_id) for r in replies}
        for n in node_ids:
            if str(n) not in answered:
                nodes.setdefault(str(n), {}).update(status="timeout", error=f"{stage}: no reply in time")

    def evaluate(self, rnd: int, nodes: dict) -> dict:
        node_ids = sorted(self.grid.get_node_ids())

        def done(_reply, e):
            log(INFO, "[round %d] %s eval: accuracy %.1f%% loss %.3f (%d records)", rnd, e["name"],
                100 * e["eval_accuracy"], e["eval_loss"], e["eval_examples"])

        self._send(node_ids, MessageType.EVALUATE, rnd, nodes, done)
        return {
            "eval_accuracy": _weighted(nodes, "eval_accuracy", "eval_examples"),
            "eval_loss": _weighted(nodes, "eval_loss", "eval_examples"),
            "eval_examples": int(sum(n.get("eval_examples", 0) for n in nodes.values())),
        }

    def train(self, rnd: int, nodes: dict) -> dict:
        fed = self.cfg.federation
        connected = sorted(self.grid.get_node_ids())
        k = max(fed.min_nodes, int(round(fed.fraction_train * len(connected))))
        rng = np.random.default_rng([self.cfg.train.seed, rnd])
        picks = rng.permutation(len(connected))[: min(k, len(connected))]  # indices: node ids are uint64
        sampled = sorted(connected[i] for i in picks)
        updates = []

        def done(reply, e):
            d = from_record(reply.content["delta"])
            try:
                check_arrays(self.global_arrays, d)
            except AdapterMismatch as exc:
                e.update(status="rejected", error=f"train: bad update: {exc}")
                log(WARNING, "[round %d] rejected update from %s: %s", rnd, e["name"], exc)
                return
            updates.append((d, float(e["examples"])))
            privacy = f", epsilon {e['epsilon']:.3f} (delta {e['delta']:.1e})" if "epsilon" in e else ""
            log(INFO, "[round %d] %s trained: loss %.3f, %d steps, %.1fs, sent %d bytes%s", rnd, e["name"],
                e["train_loss"], e["steps"], e["train_seconds"], e["bytes_sent"], privacy)

        log(INFO, "[round %d/%d] training on %d of %d nodes", rnd, fed.rounds, len(sampled), len(connected))
        self._send(sampled, MessageType.TRAIN, rnd, nodes, done)
        summary = {"sampled": len(sampled), "aggregated": len(updates), "train_loss": _weighted(nodes, "train_loss", "examples")}
        if len(updates) < fed.min_nodes:
            log(WARNING, "[round %d] only %d usable updates (< min-nodes %d): global adapter unchanged",
                rnd, len(updates), fed.min_nodes)
            return {**summary, "aggregation": "skipped"}
        delta_sum, total = weighted_sum(updates)
        self.global_arrays = self.strategy.step(self.global_arrays, delta_sum, total)
        return {**summary, "aggregation": "fedavg"}


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = RunConfig.from_flat(context.run_config)
    out = results_dir(cfg)
    start = time.monotonic()
    log(INFO, "fedtune: results will be written to %s", out)
    coord = Coordinator(grid, cfg, out)
    node_ids = wait_for_nodes(grid, cfg.federation.min_nodes, cfg.federation.node_wait_timeout)
    recorder = RunRecorder(out, {
        "config": cfg.to_flat(), "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "nodes_connected": len(node_ids), "run_id": context.run_id,
        "adapter_parameters": int(sum(a.size for a in coord.global_arrays.values())),
    })
    for rnd in range(cfg.federation.rounds + 1):
        t0, nodes = time.monotonic(), {}
        summary = coord.train(rnd, nodes) if rnd else {}
        summary.update(coord.evaluate(rnd, nodes))
        record = {"round": rnd, **summary, "seconds": round(time.monotonic() - t0, 3), "nodes": nodes}
        recorder.log_round(record)
        acc = record["eval_accuracy"]
        log(INFO, "[round %d/%d] global eval accuracy %s, loss %s, %.1fs", rnd, cfg.federation.rounds,
            "n/a" if acc is None else f"{100 * acc:.1f}%", record["eval_loss"], record["seconds"])
    adapter = export_adapter(coord.model, coord.global_arrays, out / "adapter", adapter_meta(cfg))
    report = recorder.finish({"adapter": str(adapter), "seconds_total": round(time.monotonic() - start, 1)})
    log(INFO, "fedtune: done. Report: %s  Adapter: %s", report, adapter)
