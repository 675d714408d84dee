"""A curious or malicious coordinator against the node's privacy guarantees (``pytest -m adversarial``).

The test plays the coordinator: it drives the real Coordinator and the real ClientApp over an
in-process Grid (tests/loopback.py) and rewrites what the nodes are handed - the run config and
the messages - as a SuperLink under its control could.  The nodes are *deployed* nodes: each has
its own data file, state dir and budget in its node config.  Every attack must be refused, or
leave every node's ε within its own max-epsilon, its ledger intact, and no record content in
anything the coordinator receives.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import fedtune.common.evaluation
import fedtune.common.files
import fedtune.node.local_round
from fedtune.common.config import RunConfig
from fedtune.common.data import DEPARTMENTS, generate_triage, write_jsonl
from fedtune.common.messages import BUDGET_EXHAUSTED
from fedtune.coordinator.rounds import Coordinator
from fedtune.node.local_round import train_round
from fedtune.node.privacy import PrivacyLedger, epsilon
from fedtune.node.process_cache import NodeCache

from loopback import LoopbackGrid, roster_for

pytestmark = pytest.mark.adversarial
NODES = 3
CANARY = "CANARY-7731-do-not-leak"


@pytest.fixture
def deployed(tmp_path, run_config):
    """make(**node_config extras) -> (grid, coordinator, node configs) for NODES deployed nodes."""
    keys = roster_for(tmp_path / "keys", [f"hospital-{i}" for i in range(NODES)])

    def make(run: dict | None = None, **node_extra):
        configs = []
        for i in range(NODES):
            d = tmp_path / f"node-{i}"
            d.mkdir(exist_ok=True)
            if not (d / "records.jsonl").exists():
                write_jsonl(generate_triage(120, seed=i), d / "records.jsonl")
            configs.append({"name": f"hospital-{i}", "data-path": str(d / "records.jsonl"),
                            "state-dir": str(d / "state"), "max-epsilon": 8.0, "min-eval-records": 5,
                            **keys[f"hospital-{i}"], **node_extra})
        cfg = RunConfig.from_flat({**run_config, **(run or {})})
        grid = LoopbackGrid(NODES, cfg.to_flat(), node_configs=configs)
        return grid, Coordinator(grid, cfg, run_id=7), configs
    return make


def _ledgers(config: dict) -> list[PrivacyLedger]:
    return [PrivacyLedger.load(p) for p in sorted(Path(config["state-dir"]).glob("privacy-ledger-*.json"))]


def _everything_sent(grid) -> str:
    """Every byte of text the coordinator received from the nodes: errors, info, metrics, configs."""
    parts = []
    for _, _, reply in grid.sent:
        if reply.has_error():
            parts.append(reply.error.reason or "")
            continue
        for record in reply.content.values():  # ConfigRecord / MetricRecord / ArrayRecord: all mappings
            parts.append(repr({k: (v.numpy().tobytes() if hasattr(v, "numpy") else v) for k, v in record.items()}))
    return "\n".join(parts)


def test_a_run_with_dp_switched_off_is_refused_and_nothing_is_trained_or_sent(deployed):
    grid, coord, configs = deployed()
    grid.rewrite_run_config({"privacy.enabled": False})
    nodes: dict = {}
    summary = coord.train(1, nodes)
    assert summary["aggregation"] == "skipped" and summary["aggregated"] == 0
    for n in nodes.values():
        assert n["status"] == "refused" and "require-dp" in n["error"]
    for _, _, reply in grid.sent:  # no keys, no masked vector, no delta: nothing derived from the records
        assert set(reply.content.keys()) == {"metrics", "info"} and not dict(reply.content["metrics"].items())
    assert all(_ledgers(c) == [] for c in configs)


@pytest.mark.parametrize("layout, values", [
    (b'[["base_model.model.lm_head.weight",[4294967296,4294967296]]]', 0),  # a product that wraps to 0 in int64
    (b'[["a",[Infinity]]]', 3),
    (b"[" * 100_000, 3),
])
def test_a_forged_packed_adapter_is_refused_before_any_training_and_nothing_is_spent(deployed, layout, values):
    """The adapter travels packed (one vector + its layout): a layout that lies is an error reply, no record read."""
    from flwr.app import Array, ArrayRecord

    from fedtune.common.messages import PACKED_LAYOUT, PACKED_VALUES

    grid, coord, configs = deployed()

    def forge(msg):
        if msg.metadata.message_type == "train":
            msg.content["adapter"] = ArrayRecord({PACKED_LAYOUT: Array(np.frombuffer(layout, np.uint8)),
                                                  PACKED_VALUES: Array(np.zeros(values, np.float32))})
        return msg
    grid.tamper = forge
    nodes: dict = {}
    summary = coord.train(1, nodes)
    assert summary["aggregated"] == 0 and all(n["status"] == "error" for n in nodes.values()), nodes
    assert all("ValueError" in n["error"] for n in nodes.values())  # the reason stays in the node's own log
    assert all(_ledgers(c) == [] for c in configs)  # nothing trained, no budget spent
    assert CANARY not in _everything_sent(grid)


def test_new_run_keys_never_restart_a_nodes_budget_on_the_same_records(deployed):
    grid, coord, configs = deployed()
    first: dict = {}
    coord.train(1, first)
    spent = {n["name"]: n["epsilon"] for n in first.values()}
    assert all(e > 0 for e in spent.values())
    # A "new run": another split seed, held-out fraction, format and field settings, batch size.
    grid.rewrite_run_config({"data.seed": 5, "data.eval-fraction": 0.3, "data.format": "chat",
                             "data.messages-field": "messages", "train.batch-size": 5})
    for ctx in grid.contexts.values():
        ctx.run_id = 8
    second: dict = {}
    Coordinator(grid, coord.cfg, run_id=8).train(1, second)
    for c in configs:
        (ledger,) = _ledgers(c)  # one ledger per data source, both runs in it: no fresh budget
        assert [r["run_id"] for r in ledger.rounds] == [7, 8]
        alone = epsilon(ledger.history[-1:], ledger.delta, ledger.accountant)  # what a fresh ledger would have said
        reported = next(n["epsilon"] for n in second.values() if n["name"] == c["name"])
        assert reported == pytest.approx(ledger.epsilon()) and reported > max(alone, spent[c["name"]])


def test_the_coordinator_cannot_raise_delta_above_the_nodes_ceiling(deployed):
    grid, coord, _ = deployed(**{"max-delta": 1e-4})
    grid.rewrite_run_config({"privacy.delta": 0.009})  # just below 1/N for ~108 training records
    nodes: dict = {}
    coord.train(1, nodes)
    assert all(n["status"] == "ok" and n["delta"] <= 1e-4 for n in nodes.values())


def test_two_runs_sharing_a_state_dir_cannot_both_spend_the_last_of_a_budget(deployed, monkeypatch):
    grid, coord, configs = deployed()
    cfg = coord.cfg
    node = configs[0]
    probe: dict = {}
    coord.train(1, probe)  # learn what one round costs on node 0 ...
    m = next(n for n in probe.values() if n["name"] == "hospital-0")
    one_round = m["epsilon"]
    two_rounds = epsilon([(m["noise_multiplier"], m["sample_rate"], 2 * m["steps"])], m["delta"])
    budget = (one_round + two_rounds) / 2  # room for exactly one round
    node = {**node, "state-dir": str(Path(node["state-dir"]).parent / "shared-state"), "max-epsilon": budget}
    real = fedtune.node.local_round.train_local

    def slow_train_local(*args, **kwargs):  # widen the window between budget check and ledger write
        time.sleep(1.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(fedtune.node.local_round, "train_local", slow_train_local)
    results = []
    caches = [NodeCache(), NodeCache()]  # two runs = two processes' worth of model; loaded here, one at a time
    for cache in caches:
        cache.prepare(cfg, node, coord.global_arrays)

    def one_run(run_id, cache):
        results.append(train_round(cfg, node, run_id, 1, coord.global_arrays, cache))

    threads = [threading.Thread(target=one_run, args=(rid, cache)) for rid, cache in zip((21, 22), caches)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status for r in results) == [BUDGET_EXHAUSTED, "ok"]  # ... only one of two may spend it
    (ledger,) = _ledgers(node)
    assert len(ledger.rounds) == 1 and ledger.epsilon() <= node["max-epsilon"]


def test_a_ledger_update_is_durable_before_the_update_leaves(deployed, monkeypatch):
    grid, coord, configs = deployed()
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        return real_fsync(fd)

    monkeypatch.setattr(fedtune.common.files.os, "fsync", fsync)
    train_round(coord.cfg, configs[0], 7, 1, coord.global_arrays, NodeCache())
    assert "file" in synced and synced[synced.index("file") + 1:].count("dir") >= 1  # the rename is synced too


def test_nothing_computed_from_private_batches_leaves_in_the_clear(deployed):
    grid, coord, _ = deployed()
    coord.train(1, {})
    allowed = {"examples", "num_records", "delta", "max_epsilon", "sample_rate", "noise_multiplier", "epsilon",
               "steps", "samples", "train_seconds", "prepare_seconds", "delta_clipped"}
    trains = [r for mtype, _, r in grid.sent if mtype == "train"]
    assert len(trains) == NODES
    for reply in trains:  # every record of the reply: metrics, info, the SecAgg+ advertisement
        assert set(reply.content.keys()) == {"metrics", "info", "secagg"}
        assert set(dict(reply.content["metrics"].items())) <= allowed  # no training loss of a private batch
        assert set(dict(reply.content["info"].items())) == {"name", "status", "privacy_unit", "accountant"}


def test_the_held_out_set_is_the_nodes_own_whatever_the_run_asks(deployed):
    grid, coord, _ = deployed()
    honest: dict = {}
    coord.evaluate(0, honest)
    sizes = {n["name"]: n["eval_examples"] for n in honest.values()}
    assert all(s == 12 for s in sizes.values())  # 10% of 120 records, the node's own split
    grid.rewrite_run_config({"data.eval-fraction": 0.01, "data.seed": 3})  # "evaluate on one record"
    coord.global_arrays = {k: v + 0.01 for k, v in coord.global_arrays.items()}  # a new adapter to evaluate
    probed: dict = {}
    coord.evaluate(1, probed)
    assert {n["name"]: n["eval_examples"] for n in probed.values()} == sizes


def test_a_node_refuses_to_evaluate_fewer_held_out_records_than_its_minimum(deployed):
    grid, coord, _ = deployed(**{"min-eval-records": 50})
    nodes: dict = {}
    summary = coord.evaluate(0, nodes)
    assert all(n["status"] == "refused" and "min-eval-records" in n["error"] for n in nodes.values())
    assert summary["eval_accuracy"] is None and not any("eval_loss" in n for n in nodes.values())


def test_an_adapter_is_evaluated_at_most_once(deployed, monkeypatch):
    grid, coord, _ = deployed()
    forwards = []
    real = fedtune.common.evaluation.per_sample_forward
    monkeypatch.setattr(fedtune.common.evaluation, "per_sample_forward",
                        lambda *a, **k: (forwards.append(1), real(*a, **k))[1])
    first: dict = {}
    coord.evaluate(0, first)
    work = len(forwards)
    assert work > 0
    for rnd in (1, 2):  # the coordinator asks again and again for the same adapter
        again: dict = {}
        coord.evaluate(rnd, again)
        assert {k: v["eval_accuracy"] for k, v in again.items()} == {k: v["eval_accuracy"] for k, v in first.items()}
        # the first evaluation's own seconds too: a repeated request does not even time anything new
        assert {k: v["eval_seconds"] for k, v in again.items()} == {k: v["eval_seconds"] for k, v in first.items()}
    assert len(forwards) == work  # answered from the node's memo: no second look at its records
    coord.global_arrays = {k: v + 0.01 for k, v in coord.global_arrays.items()}
    coord.evaluate(3, {})
    assert len(forwards) == 2 * work  # a new adapter is evaluated (once)


def test_per_label_counts_stay_on_a_deployed_node_unless_it_releases_them(deployed):
    labels = {"data.labels": ",".join(DEPARTMENTS)}
    grid, coord, _ = deployed(run=labels)
    coord.evaluate(0, {})
    evals = [r for mtype, _, r in grid.sent if mtype == "evaluate"]
    assert evals and not any(k.startswith("eval_label_") for r in evals for k in dict(r.content["metrics"].items()))
    grid2, coord2, _ = deployed(run=labels, **{"release-label-counts": True})
    for ctx in grid2.contexts.values():  # other nodes' state (the first ones' memo holds no counts)
        ctx.node_config["state-dir"] += "-releasing"
    coord2.evaluate(0, {})
    evals = [r for mtype, _, r in grid2.sent if mtype == "evaluate"]
    assert all("eval_label_tp" in dict(r.content["metrics"].items()) for r in evals)


def test_error_replies_never_carry_record_content(deployed, tmp_path, monkeypatch):
    grid, coord, configs = deployed(run={"data.labels": ",".join(DEPARTMENTS)})
    path = Path(configs[0]["data-path"])
    record = {"messages": [{"role": "user", "content": "chest pain"}, {"role": "assistant", "content": "cardiology"}],
              "label": CANARY}
    path.write_text(path.read_text() + json.dumps(record) + "\n")  # a record whose label is not allowed
    nodes: dict = {}
    coord.train(1, nodes)
    bad = nodes[str(grid.node_ids[0])]
    assert bad["status"] == "error" and "line 121: unknown label" in bad["error"]  # names the line and the field
    real = fedtune.node.local_round.train_local

    def leaky(*a, **k):  # a library error that quotes what it was handed
        raise ValueError(f"cannot tokenize {CANARY!r}")

    monkeypatch.setattr(fedtune.node.local_round, "train_local", leaky)
    coord.train(2, {})
    monkeypatch.setattr(fedtune.node.local_round, "train_local", real)
    assert CANARY not in _everything_sent(grid)
    assert any("ValueError (details in the node's own log)" in (r.error.reason or "") for _, _, r in grid.sent
               if r.has_error())


def test_a_run_extended_with_more_rounds_paces_the_rest_of_the_budget(deployed):
    paced = {"privacy.noise-multiplier": 0.0, "privacy.target-epsilon": 3.0, "federation.rounds": 2}
    grid, coord, configs = deployed(run=paced, **{"max-epsilon": 3.0})
    sigmas = []
    for rnd in (1, 2):
        nodes: dict = {}
        coord.train(rnd, nodes)
        assert all(n["status"] == "ok" for n in nodes.values())
        sigmas.append(next(iter(nodes.values()))["noise_multiplier"])
    # "go on for longer": the coordinator asks for 4 rounds in all
    grid.rewrite_run_config({"federation.rounds": 4})
    for rnd in (3, 4):
        nodes = {}
        coord.train(rnd, nodes)
        assert all(n["status"] == "ok" and n["epsilon"] <= 3.0 for n in nodes.values()), nodes
        sigmas.append(next(iter(nodes.values()))["noise_multiplier"])
    assert sigmas[2] > sigmas[1]  # more noise for the rounds beyond the first plan
    for c in configs:
        assert _ledgers(c)[0].epsilon() <= 3.0


def test_a_retried_round_never_overspends_and_leaves_budget_for_the_rounds_still_planned(deployed):
    grid, coord, configs = deployed(run={"privacy.noise-multiplier": 0.0, "privacy.target-epsilon": 2.0,
                                         "federation.rounds": 2}, **{"max-epsilon": 2.0})
    for attempt in range(2):  # round 1 "fails" after the nodes trained, and is retried
        coord.train(1, {}, attempt)
    last: dict = {}
    coord.train(2, last)
    assert all(n["status"] == "ok" and n["epsilon"] <= 2.0 for n in last.values())  # round 2 still trains
    for c in configs:
        (ledger,) = _ledgers(c)
        assert len(ledger.rounds) == 3 and ledger.epsilon() <= 2.0


def test_group_level_privacy_is_the_nodes_choice_whatever_the_run_asks(deployed, tmp_path):
    grid, coord, configs = deployed(**{"privacy-unit": "group", "group-column": "patient"})
    for c in configs:  # each record belongs to one of 30 patients (4 notes each)
        path = Path(c["data-path"])
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps({**r, "patient": f"p{i % 30}"}) + "\n" for i, r in enumerate(rows)))
    grid.rewrite_run_config({"privacy.unit": "record"})
    nodes: dict = {}
    coord.train(1, nodes)
    assert all(n["status"] == "ok" for n in nodes.values())
    for c in configs:
        (ledger,) = _ledgers(c)
        assert ledger.unit == "group" and ledger.num_records == 30  # ε counts patients, not notes


def test_a_node_sending_a_garbage_masked_vector_aborts_the_round_and_the_adapter_stays(deployed):
    """A malicious *node*: its masked vector is random words. Decoded, the sum is garbage; the
    coordinator's checks (total weight = announced weights, norm <= Σw·C) refuse it before the
    strategy sees it."""
    from flwr.app import Array

    grid, coord, _ = deployed()
    before = {k: v.copy() for k, v in coord.global_arrays.items()}
    liar = grid.node_ids[1]
    rng = np.random.default_rng(0)

    def garbage(mtype, nid, reply, context):
        if mtype == "train.secagg_mask" and nid == liar:
            honest = reply.content["masked"]["masked"].numpy()
            reply.content["masked"]["masked"] = Array(rng.integers(0, 2**32, honest.shape, dtype=np.uint32))

    grid.observe = garbage
    nodes: dict = {}
    summary = coord.train(1, nodes)
    assert summary["aggregation"] == "aborted" and "announced" in summary["secagg_error"]
    assert all(np.array_equal(coord.global_arrays[k], before[k]) for k in before)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA, where model.device = cuda fails")
def test_a_node_runs_its_model_where_its_own_config_says_whatever_the_run_config_asks(deployed):
    """The coordinator asks for ``model.device = cuda``, which this machine lacks: nodes that leave the device to the
    run refuse (a clear error, nothing evaluated); nodes whose operator set ``device = cpu`` evaluate on the CPU."""
    grid, coord, _ = deployed()
    grid.rewrite_run_config({"model.device": "cuda"})
    refused: dict = {}
    coord.evaluate(0, refused)
    assert len(refused) == NODES and all("model.device = 'cuda'" in n.get("error", "") for n in refused.values())
    grid, coord, _ = deployed(device="cpu")
    grid.rewrite_run_config({"model.device": "cuda"})
    done: dict = {}
    coord.evaluate(0, done)
    assert len(done) == NODES and all(n.get("eval_examples", 0) > 0 and "error" not in n for n in done.values())
    _, coord, _ = deployed(device="tpu")
    bad: dict = {}
    coord.evaluate(0, bad)
    assert all("node config device = 'tpu'" in n.get("error", "") for n in bad.values())
