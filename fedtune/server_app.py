"""The coordinator's Flower ServerApp: drives rounds over the Grid, aggregates LoRA deltas only.

Round 0 evaluates the initial adapter (LoRA B = 0, identical to the base model) so the gain
is visible; each round then samples nodes, has them train, obtains the weighted sum of their
deltas — by default under SecAgg+ (``secagg/server.py``), so no single node's delta is ever seen
here — lets the strategy step the global adapter, and evaluates it on every node's held-out
records.  Results: ``metrics.jsonl``, ``report.md`` and ``adapter/`` in the out dir.
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

from .adapters import AdapterMismatch, check_arrays, export_adapter, get_adapter_arrays, set_adapter_arrays, unflatten
from .config import RunConfig
from .messages import error_text, exchange, from_record, reply_bytes, to_record, wait_for_nodes
from .data import RecordSpec
from .data.synthetic import DEPARTMENTS, INSTRUCTION as TRIAGE_INSTRUCTION
from .evaluation import combine_metrics, evaluate
from .node import SYNTHETIC_TRIAGE, cached_model, load_data_file
from .report import RunRecorder
from .secagg.crypto import SecAggError
from .secagg.params import clip_bound
from .secagg.server import Advert, SecAggServer
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
    elif cfg.data.format == "classification" and cfg.data.label_list:
        meta["system"] = RecordSpec.from_config(cfg.data).classification_prompt(cfg.data.label_list)
    return meta


def central_eval_data(cfg: RunConfig, encoder) -> tuple[list, tuple[str, ...]]:
    """The coordinator's evaluation file, encoded, and its label set (refused if any record is bad)."""
    data = load_data_file(cfg.data, cfg.data.eval_file)
    labels = cfg.data.label_list or (DEPARTMENTS if cfg.data.source == SYNTHETIC_TRIAGE else data.labels)
    return encoder.encode_all(data.examples), tuple(labels)


class Coordinator:
    """State of one federated run on the server side."""

    def __init__(self, grid: Grid, cfg: RunConfig, out: Path, run_id: int = 0):
        self.grid, self.cfg, self.out, self.run_id = grid, cfg, out, run_id
        self.model, _, self.encoder = cached_model(cfg.model, cfg.lora, cfg.train.seed)
        self.global_arrays = get_adapter_arrays(self.model)
        self.strategy = FedAvg(cfg.federation.server_lr)
        self.central = central_eval_data(cfg, self.encoder) if cfg.data.eval_file else None

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
        summary = combine_metrics(list(nodes.values()))  # every node that evaluated, whatever its training did
        if self.central is not None:
            summary.update(self.evaluate_central(rnd))
        return summary

    def evaluate_central(self, rnd: int) -> dict:
        """Score the global adapter on the coordinator's own evaluation file."""
        cfg, (encoded, labels) = self.cfg, self.central
        set_adapter_arrays(self.model, self.global_arrays)
        result = evaluate(self.model, self.encoder, encoded, cfg.train.eval_batch_size, cfg.model.precision, labels,
                          cfg.train.eval_max_new_tokens)
        metrics = combine_metrics([result.to_metrics("central_")], "central_")
        log(INFO, "[round %d] central eval: accuracy %.1f%% loss %.3f (%d records)", rnd,
            100 * metrics["central_accuracy"], metrics["central_loss"], result.examples)
        return metrics

    def train(self, rnd: int, nodes: dict) -> dict:
        fed, secure = self.cfg.federation, self.cfg.secagg.enabled
        connected = sorted(self.grid.get_node_ids())
        k = max(fed.min_nodes, int(round(fed.fraction_train * len(connected))))
        rng = np.random.default_rng([self.cfg.train.seed, rnd])
        picks = rng.permutation(len(connected))[: min(k, len(connected))]  # indices: node ids are uint64
        sampled = sorted(connected[i] for i in picks)
        updates, adverts = [], {}

        def done(reply, e):
            e["bytes_sent"] = reply_bytes(reply)
            if secure:  # only two public keys and the weight came back; the delta stays on the node
                try:
                    adverts[reply.metadata.src_node_id] = Advert.from_record(reply.content["secagg"])
                except (KeyError, TypeError, ValueError, SecAggError) as exc:
                    e.update(status="rejected", error=f"train: bad key advertisement: {exc}")
                    return
            else:
                d = from_record(reply.content["delta"])
                try:
                    check_arrays(self.global_arrays, d)
                except AdapterMismatch as exc:
                    e.update(status="rejected", error=f"train: bad update: {exc}")
                    log(WARNING, "[round %d] rejected update from %s: %s", rnd, e["name"], exc)
                    return
                updates.append((d, float(e["examples"])))
            privacy = f", epsilon {e['epsilon']:.3f} (delta {e['delta']:.1e})" if "epsilon" in e else ""
            log(INFO, "[round %d] %s trained: loss %.3f, %d steps, %.1fs%s", rnd, e["name"],
                e["train_loss"], e["steps"], e["train_seconds"], privacy)

        log(INFO, "[round %d/%d] training on %d of %d nodes", rnd, fed.rounds, len(sampled), len(connected))
        t0 = time.monotonic()
        self._send(sampled, MessageType.TRAIN, rnd, nodes, done)
        summary = {"sampled": len(sampled), "secure_aggregation": secure,
                   "train_loss": _weighted(nodes, "train_loss", "examples")}
        ready = len(adverts) if secure else len(updates)
        if ready < fed.min_nodes:
            log(WARNING, "[round %d] only %d usable updates (< min-nodes %d): global adapter unchanged",
                rnd, ready, fed.min_nodes)
            return {**summary, "aggregated": 0, "aggregation": "skipped", "train_phase_seconds": _since(t0)}
        if secure:
            try:
                result = self._secure_sum(rnd, adverts, nodes)
            except SecAggError as exc:
                log(WARNING, "[round %d] secure aggregation aborted, global adapter unchanged: %s", rnd, exc)
                gone = [str(n) for n in adverts if nodes.get(str(n), {}).get("status") in ("dropped", "error")]
                return {**summary, "aggregated": 0, "aggregation": "aborted", "secagg_error": str(exc),
                        "dropped_nodes": gone, "train_phase_seconds": _since(t0)}
            delta_sum, total = unflatten(result.weighted_sum, self.global_arrays), result.total_weight
            summary.update(dropped_nodes=[str(n) for n in result.dropped], secagg_seconds=round(result.seconds, 3),
                           secagg={"degree": result.degree, "threshold": result.threshold, **result.stages})
            aggregated = len(result.survivors)
        else:
            delta_sum, total = weighted_sum(updates)
            aggregated = len(updates)
        self.global_arrays = self.strategy.step(self.global_arrays, delta_sum, total)
        return {**summary, "aggregated": aggregated, "aggregation": "fedavg", "train_phase_seconds": _since(t0)}

    def _secure_sum(self, rnd: int, adverts: dict, nodes: dict):
        cfg = self.cfg
        size = int(sum(a.size for a in self.global_arrays.values()))
        server = SecAggServer(self.grid, rnd, self.run_id, size, clip_bound(cfg, size), cfg.secagg.dropout,
                              cfg.secagg.stage_timeout, nodes)
        result = server.run(adverts)
        if len(result.survivors) < cfg.federation.min_nodes:
            raise SecAggError(f"only {len(result.survivors)} nodes completed the protocol (< min-nodes "
                              f"{cfg.federation.min_nodes})")
        log(INFO, "[round %d] secure sum of %d nodes in %.1fs (dropped: %s)", rnd, len(result.survivors),
            result.seconds, ", ".join(nodes.get(str(n), {}).get("name", str(n)) for n in result.dropped) or "none")
        return result


def _since(t0: float) -> float:
    return round(time.monotonic() - t0, 3)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = RunConfig.from_flat(context.run_config)
    out = results_dir(cfg)
    start = time.monotonic()
    log(INFO, "fedtune: results will be written to %s", out)
    coord = Coordinator(grid, cfg, out, int(context.run_id))
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
