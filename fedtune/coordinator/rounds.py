"""One federated round on the coordinator: sample nodes, have them train, aggregate, evaluate.

Each round samples nodes, has them train, obtains the weighted sum of their deltas - by default
under SecAgg+ (``secagg.py``), so no single node's delta is ever seen here - lets the
strategy step the global adapter, and evaluates it on every node's held-out records (and the
coordinator's own evaluation file, if any).  Every failure is recorded with its reason: a node
that errs, times out or has spent its privacy budget; an aborted secure aggregation; an aggregate
the strategy refuses (NaN/Inf, wrong shape).  In all of these the global adapter stays as it was.
The run around the rounds (checkpoints, resume, retries, reports) is ``server_app.py``.
"""

from __future__ import annotations

import time
from logging import INFO, WARNING

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedtune.common.adapters import AdapterMismatch, adapter_hash, check_arrays, trained_part, unflatten
from fedtune.common.config import RunConfig
from fedtune.common.data import DEPARTMENTS, SYNTHETIC_TRIAGE, RecordSpec, load_data_file
from fedtune.common.data.load import triage_instruction
from fedtune.common.evaluation import combine_metrics, evaluate
from fedtune.common.messages import BUDGET_EXHAUSTED, OK, error_text, from_record, to_record
from fedtune.common.model_cache import ModelCache, ModelSpec
from fedtune.common.secagg.crypto import SecAggError
from fedtune.common.secagg.params import clip_bound
from fedtune.common.secagg.round import Advert, RoundParams, round_id
from fedtune.coordinator.grid import exchange, reply_bytes
from fedtune.coordinator.secagg import SecAggServer
from fedtune.coordinator.strategy import BadAggregate, make_strategy, weighted_sum


def _weighted(nodes: dict, key: str, weight: str) -> float | None:
    pairs = [(n[key], n[weight]) for n in nodes.values() if key in n and n.get(weight)]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else None


def adapter_meta(cfg: RunConfig) -> dict:
    """What ``fedtune generate`` needs to use the adapter as it was trained."""
    meta: dict = {"model.name": cfg.model.name, "data.source": cfg.data.source}
    if cfg.data.source == SYNTHETIC_TRIAGE:
        meta["system"] = triage_instruction(cfg.data)
    elif cfg.data.format == "classification" and cfg.data.label_list:
        meta["system"] = RecordSpec.from_config(cfg.data).classification_prompt(cfg.data.label_list)
    return meta


def central_eval_data(cfg: RunConfig, encoder) -> tuple[list, tuple[str, ...]]:
    """The coordinator's evaluation file, encoded, and its label set (refused if any record is bad)."""
    data = load_data_file(cfg.data, cfg.data.eval_file)
    labels = cfg.data.label_list or (DEPARTMENTS if cfg.data.source == SYNTHETIC_TRIAGE else data.labels)
    return encoder.encode_all(data.examples), tuple(labels)


ACCOUNTING = ("privacy_unit", "accountant")  # text a node reports beside its ε
EVAL_STREAM = 1 << 20  # the evaluation sample's seed stream (training's uses the attempt number, never this large)


def seeded_sample(node_ids: list[int], k: int, seed: list[int]) -> list[int]:
    """``k`` of ``node_ids`` (all if fewer), drawn from ``seed`` alone: a resumed run draws the same cohort."""
    rng = np.random.default_rng(seed)
    picks = rng.permutation(len(node_ids))[: min(k, len(node_ids))]  # indices: node ids are uint64
    return sorted(node_ids[i] for i in picks)


class Coordinator:
    """The server side of one federated run, one round at a time (state: global adapter + strategy)."""

    def __init__(self, grid: Grid, cfg: RunConfig, run_id: int = 0):
        self.grid, self.cfg, self.run_id = grid, cfg, run_id
        # The coordinator's own model (central evaluation, export): never a node's instance.
        self.models, self.spec = ModelCache(capacity=1), ModelSpec.of(cfg)
        self.global_arrays = self.models.initial_adapter(self.spec)
        self.strategy = make_strategy(cfg.federation)
        self.central = central_eval_data(cfg, self.models.encoder(self.spec)) if cfg.data.eval_file else None
        self.exhausted: set[int] = set()  # nodes that declined for lack of privacy budget: not asked again
        self.names: dict[str, str] = {}  # node id -> the name it reported (error replies carry none)

    def trained(self) -> "OrderedDict[str, np.ndarray]":
        """The part of the global adapter a round trains and aggregates (only B under lora.freeze-a)."""
        return trained_part(self.global_arrays, self.cfg.lora.freeze_a)

    def global_model(self):
        """(model, encoder) holding the current global adapter."""
        return self.models.holding(self.spec, self.global_arrays)

    def eligible(self) -> list[int]:
        """Connected nodes that may still train (their privacy budget is not spent)."""
        return sorted(n for n in self.grid.get_node_ids() if n not in self.exhausted)

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
                _fail(entry, "error", f"{stage}: {error_text(reply)}")
                if nid in self.names:
                    entry["name"] = self.names[nid]
                log(WARNING, "[round %d] node %s failed %s: %s", rnd, self.names.get(nid, nid), stage, entry["error"])
                return
            info = reply.content["info"]
            entry["name"] = self.names[nid] = str(info["name"])
            entry.update({k: str(info[k]) for k in ACCOUNTING if k in info})  # how the node's ε was computed
            entry.update({k: v for k, v in reply.content["metrics"].items()})
            status = str(info["status"])
            if status != OK:  # its privacy budget is spent, or its policy refuses the run: the round goes on
                why = f"{status}: {info['reason']}" if "reason" in info else status
                _fail(entry, status, f"{stage}: declined ({why})")
                if status == BUDGET_EXHAUSTED:
                    self.exhausted.add(reply.metadata.src_node_id)
                log(WARNING, "[round %d] %s declined %s: %s (epsilon %.3f of its budget %.3f)", rnd, entry["name"],
                    stage, why, entry.get("epsilon", float("nan")), entry.get("max_epsilon", float("nan")))
                return
            entry.setdefault("status", "ok")
            on_ok(reply, entry)

        replies = exchange(self.grid, msgs, self.cfg.federation.round_timeout, handle)
        answered = {str(r.metadata.src_node_id) for r in replies}
        for n in node_ids:
            if str(n) not in answered:
                entry = nodes.setdefault(str(n), {})
                _fail(entry, "timeout", f"{stage}: no reply in {self.cfg.federation.round_timeout:g}s")
                if str(n) in self.names:
                    entry["name"] = self.names[str(n)]

    def evaluation_cohort(self, rnd: int) -> list[int]:
        """The nodes asked to evaluate round ``rnd``'s adapter: a seeded sample of ``fraction-evaluate`` of the
        connected nodes (all of them in the last round with ``evaluate-all-last``); resumable like training's."""
        fed, node_ids = self.cfg.federation, sorted(self.grid.get_node_ids())
        if fed.fraction_evaluate >= 1 or (fed.evaluate_all_last and rnd >= fed.rounds):
            return node_ids
        k = max(1, int(round(fed.fraction_evaluate * len(node_ids))))
        return seeded_sample(node_ids, k, [self.cfg.train.seed, rnd, EVAL_STREAM])

    def evaluate(self, rnd: int, nodes: dict) -> dict:
        node_ids = self.evaluation_cohort(rnd)

        def done(_reply, e):
            log(INFO, "[round %d] %s eval: accuracy %.1f%% loss %.3f (%d records)", rnd, e["name"],
                100 * e["eval_accuracy"], e["eval_loss"], e["eval_examples"])

        self._send(node_ids, MessageType.EVALUATE, rnd, nodes, done)
        # Every node that evaluated, whatever its training did; in node-name order, not reply order (nor
        # Flower's random node ids), so the pooled floats do not depend on which node answered first.
        summary = combine_metrics(sorted(nodes.values(), key=lambda e: str(e.get("name", ""))))
        summary["evaluated"] = len(node_ids)
        if self.central is not None:
            summary.update(self.evaluate_central(rnd))
        return summary

    def evaluate_central(self, rnd: int) -> dict:
        """Score the global adapter on the coordinator's own evaluation file."""
        cfg, (encoded, labels) = self.cfg, self.central
        model, encoder = self.global_model()
        result = evaluate(model, encoder, encoded, cfg.train.eval_batch_size, cfg.model.precision, labels,
                          cfg.train.eval_max_new_tokens, cfg.train.eval_method)
        metrics = combine_metrics([result.to_metrics("central_")], "central_")
        log(INFO, "[round %d] central eval: accuracy %.1f%% loss %.3f (%d records)", rnd,
            100 * metrics["central_accuracy"], metrics["central_loss"], result.examples)
        return metrics

    def train(self, rnd: int, nodes: dict, attempt: int = 0) -> dict:
        """Train on a sample of nodes and step the global adapter; the summary's ``aggregation`` says
        how it went: ``fedavg`` (stepped), or ``skipped`` / ``aborted`` / ``rejected`` (unchanged)."""
        fed, secure = self.cfg.federation, self.cfg.secagg.enabled
        eligible = self.eligible()
        k = max(fed.min_nodes, int(round(fed.fraction_train * len(eligible))))
        sampled = seeded_sample(eligible, k, [self.cfg.train.seed, rnd, attempt])  # see checkpoint.py: resumable
        updates, adverts = [], {}

        def done(reply, e):
            e["bytes_sent"] = reply_bytes(reply)
            if secure:  # only two public keys and the weight came back; the delta stays on the node
                try:
                    adverts[reply.metadata.src_node_id] = Advert.from_record(reply.content["secagg"])
                except (KeyError, TypeError, ValueError, SecAggError) as exc:
                    _fail(e, "rejected", f"train: bad key advertisement: {exc}")
                    return
            else:
                try:
                    d = from_record(reply.content["delta"])
                    check_arrays(self.trained(), d)
                except (KeyError, TypeError, ValueError, AdapterMismatch) as exc:  # a node may send anything
                    _fail(e, "rejected", f"train: bad update: {exc}")
                    log(WARNING, "[round %d] rejected update from %s: %s", rnd, e["name"], exc)
                    return
                updates.append((d, float(e["examples"])))
            privacy = f", epsilon {e['epsilon']:.3f} (delta {e['delta']:.1e})" if "epsilon" in e else ""
            loss = f"loss {e['train_loss']:.3f}, " if "train_loss" in e else ""  # never sent under DP
            log(INFO, "[round %d] %s trained: %s%d steps, %.1fs%s", rnd, e["name"], loss, e["steps"],
                e["train_seconds"], privacy)

        log(INFO, "[round %d/%d] training on %d of %d nodes%s", rnd, fed.rounds, len(sampled), len(eligible),
            f" (retry {attempt})" if attempt else "")
        t0 = time.monotonic()
        self._send(sampled, MessageType.TRAIN, rnd, nodes, done)
        summary = {"sampled": len(sampled), "secure_aggregation": secure,
                   "train_loss": _weighted(nodes, "train_loss", "examples")}
        ready = len(adverts) if secure else len(updates)
        if ready < fed.min_nodes:
            reason = f"only {ready} usable updates (< min-nodes {fed.min_nodes})"
            log(WARNING, "[round %d] %s: global adapter unchanged", rnd, reason)
            return {**summary, "aggregated": 0, "aggregation": "skipped", "reason": reason,
                    "train_phase_seconds": _since(t0)}
        if secure:
            try:
                result = self._secure_sum(rnd, adverts, nodes)
            except SecAggError as exc:
                log(WARNING, "[round %d] secure aggregation aborted, global adapter unchanged: %s", rnd, exc)
                gone = [str(n) for n in adverts if nodes.get(str(n), {}).get("status") in ("dropped", "error")]
                return {**summary, "aggregated": 0, "aggregation": "aborted", "secagg_error": str(exc),
                        "reason": f"secure aggregation aborted: {exc}", "dropped_nodes": gone,
                        "train_phase_seconds": _since(t0)}
            summary.update(dropped_nodes=[str(n) for n in result.dropped], secagg_seconds=round(result.seconds, 3),
                           secagg={"degree": result.degree, "threshold": result.threshold, **result.stages})
            aggregated = len(result.survivors)
        else:
            aggregated = len(updates)
        try:
            if secure:
                delta_sum, total = unflatten(result.weighted_sum, self.trained()), result.total_weight
            else:
                delta_sum, total = weighted_sum(updates)
            self.global_arrays = self.strategy.step(self.global_arrays, delta_sum, total)
        except (BadAggregate, AdapterMismatch) as exc:
            log(WARNING, "[round %d] aggregate of %d nodes rejected, global adapter unchanged: %s", rnd, aggregated, exc)
            return {**summary, "aggregated": 0, "aggregation": "rejected", "reason": f"aggregate rejected: {exc}",
                    "train_phase_seconds": _since(t0)}
        return {**summary, "aggregated": aggregated, "aggregation": fed.strategy, "train_phase_seconds": _since(t0)}

    def _secure_sum(self, rnd: int, adverts: dict, nodes: dict):
        cfg = self.cfg
        size = int(sum(a.size for a in self.trained().values()))
        params = RoundParams(round_id(self.run_id, rnd), adapter_hash(self.global_arrays), size + 1,
                             clip_bound(cfg, size), cfg.secagg.max_weight)
        server = SecAggServer(self.grid, rnd, params, cfg.secagg.dropout, cfg.secagg.stage_timeout, nodes)
        result = server.run(adverts)
        if len(result.survivors) < cfg.federation.min_nodes:
            raise SecAggError(f"only {len(result.survivors)} nodes completed the protocol (< min-nodes "
                              f"{cfg.federation.min_nodes})")
        log(INFO, "[round %d] secure sum of %d nodes in %.1fs (dropped: %s)", rnd, len(result.survivors),
            result.seconds, ", ".join(nodes.get(str(n), {}).get("name", str(n)) for n in result.dropped) or "none")
        return result


def _fail(entry: dict, status: str, error: str) -> None:
    """Record a node's failure; a later stage's failure (eval after train) adds to the first, never hides it."""
    if entry.get("status") in (None, "ok"):
        entry["status"] = status
    entry["error"] = f"{entry['error']}; {error}" if entry.get("error") else error


def _since(t0: float) -> float:
    return round(time.monotonic() - t0, 3)
