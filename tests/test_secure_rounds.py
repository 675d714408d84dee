"""SecAgg+ inside real rounds: the real Coordinator and ClientApp, connected by an in-process Grid.

Relative error bound stated and asserted here: the secure aggregate equals the plain weighted
average of the survivors' clipped deltas within relative L2 error <= 1e-4 (fixed-point
encoding with per-round bounds; measured ~1e-7 on these models).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from fedtune.common.adapters import adapter_parameters, flatten, get_adapter_arrays
from fedtune.common.config import RunConfig
from fedtune.common.messages import from_record, to_record
from fedtune.common.secagg.crypto import SecAggError
from fedtune.common.secagg.protocol import ClientSession, Trust
from fedtune.common.secagg.roster import SimulatedRoster, simulated_signing_key
from fedtune.common.secagg.round import RoundParams
from fedtune.coordinator.rounds import Coordinator
from fedtune.coordinator.strategy import FedAvg
from fedtune.coordinator.secagg import SecAggServer
from fedtune.node import optimizer_state
from fedtune.node import secagg as secagg_client
import fedtune.node.local_round

from loopback import LoopbackGrid, roster_for

NODES = 8
TRUST = Trust("hospital-0", simulated_signing_key("hospital-0"), SimulatedRoster())  # a simulated node's


class SpyStrategy(FedAvg):
    """Records what the strategy is given: it must only ever be one sum and one total weight."""

    def __init__(self):
        super().__init__(1.0)
        self.calls = []

    def step(self, global_arrays, delta_sum, total):
        self.calls.append((dict(delta_sum), total))
        return super().step(global_arrays, delta_sum, total)


def federation(run_config, tmp_path, monkeypatch=None, **overrides):
    """An in-process federation; with ``monkeypatch``, each node's true local adapter is captured
    straight from its model the moment its training ends."""
    cfg = RunConfig.from_flat({**run_config, **overrides})
    grid = LoopbackGrid(NODES, cfg.to_flat())
    coord = Coordinator(grid, cfg, run_id=7)
    coord.strategy = SpyStrategy()
    inputs, true_deltas, trained = {}, {}, []
    if monkeypatch is not None:
        real = fedtune.node.local_round.train_local

        def train_local(model, *args, **kwargs):
            result = real(model, *args, **kwargs)
            trained.append(get_adapter_arrays(model))
            return result

        monkeypatch.setattr(fedtune.node.local_round, "train_local", train_local)

    def observe(mtype, nid, reply, context):
        """At the end of each node's training: what it keeps to mask, and its true local delta."""
        if mtype == "train" and not reply.has_error() and "secagg.input" in context.state:
            session = context.state["secagg.session"]
            inputs[nid] = (context.state["secagg.input"]["delta"].numpy().copy(), float(session["weight"]),
                           RoundParams.unpack(session["params"]).clip)
            if trained:
                true_deltas[nid] = flatten(trained[-1]) - flatten(coord.global_arrays)

    grid.observe = observe
    return grid, coord, inputs, true_deltas


def _relative_error(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _expected_mean(inputs, ids):
    total = sum(inputs[i][1] for i in ids)
    return sum(inputs[i][1] * inputs[i][0].astype(np.float64) for i in ids) / total, total


def test_secure_round_gives_the_weighted_average_and_the_strategy_sees_only_the_sum(run_config, tmp_path, monkeypatch):
    grid, coord, inputs, true_deltas = federation(run_config, tmp_path, monkeypatch)
    nodes: dict = {}
    summary = coord.train(1, nodes)
    assert summary["secure_aggregation"] is True and summary["aggregation"] == "fedavg"
    assert summary["aggregated"] == NODES and summary["dropped_nodes"] == []
    assert summary["secagg"]["degree"] == NODES - 1  # n <= 8: complete graph (SecAgg)

    (delta_sum, total), = coord.strategy.calls  # exactly one call per round ...
    got = flatten(delta_sum).astype(np.float64) / total
    want, want_total = _expected_mean(inputs, grid.node_ids)
    assert total == pytest.approx(want_total, rel=1e-6)
    assert _relative_error(got, want) <= 1e-4
    for nid in grid.node_ids:  # ... with a sum, never one node's update
        assert _relative_error(got, inputs[nid][0]) > 1e-2

    # what each node masked is exactly its own clipped LoRA delta (same layout as the adapter)
    sizes = sum(p.numel() for p in adapter_parameters(coord.global_model()[0]).values())
    for nid, (vector, _, clip) in inputs.items():
        assert vector.shape == (sizes,)
        norm = np.linalg.norm(true_deltas[nid])
        expected = true_deltas[nid] * min(1.0, clip / norm)
        assert np.allclose(vector, expected, rtol=1e-5, atol=1e-8)


# Every record a node's reply may hold, per message type, and every key in it.
TRAIN_METRICS = {"examples", "num_records", "delta", "max_epsilon", "sample_rate", "noise_multiplier", "epsilon",
                 "steps", "samples", "train_seconds", "prepare_seconds", "delta_clipped"}
REPLY_RECORDS = {
    "train": {"metrics": TRAIN_METRICS, "info": {"name", "status", "privacy_unit", "accountant"},
              "secagg": {"name", "params", "c_public", "s_public", "weight", "b_commit", "signature"}},
    "train.secagg_share": {"secagg": {"to", "ciphertexts"}},
    "train.secagg_mask": {"masked": {"masked"}},
    "train.secagg_confirm": {"secagg": {"signature"}},
    "train.secagg_unmask": {"secagg": {"about", "kinds", "shares"}},
}


@pytest.mark.parametrize("carry", [False, True], ids=["fresh-adamw", "carried-moments"])
def test_nothing_but_keys_ciphertexts_and_one_masked_vector_leaves_a_node(run_config, tmp_path, carry):
    """Every record of every reply of the training phase - arrays, configs and metrics - is one of
    the SecAgg+ messages or a count/privacy figure; the only array is the masked uint32 vector.
    Also when the node keeps its AdamW moments for its next round (they stay in its Context.state)."""
    grid, coord, _, _ = federation(run_config, tmp_path, **{"train.carry-optimizer-state": carry})
    coord.train(1, {})
    size = sum(a.size for a in coord.global_arrays.values())
    seen = set()
    for mtype, nid, reply in grid.sent:
        assert not reply.has_error(), reply.error.reason
        seen.add(mtype)
        expected = REPLY_RECORDS[mtype]
        assert set(reply.content.keys()) == set(expected), f"{mtype} reply of node {nid}"
        for rname, record in reply.content.items():
            assert set(record.keys()) <= expected[rname], f"{mtype}/{rname} of node {nid}: {set(record.keys())}"
        for rname, record in reply.content.config_records.items():  # public keys, ciphertexts, shares
            for key, value in record.items():
                values = value if isinstance(value, list) else [value]
                assert all(isinstance(v, (bytes, int, float, str)) for v in values), (mtype, key)
        for record in reply.content.metric_records.values():  # figures only: no arrays smuggled as lists
            assert all(isinstance(v, (int, float)) for v in record.values())
        arrays = [arr.numpy() for rec in reply.content.array_records.values() for arr in rec.values()]
        if mtype == "train.secagg_mask":
            (arr,) = arrays
            assert arr.dtype == np.uint32 and arr.shape == (size + 1,)
        else:
            assert arrays == [], f"{mtype} reply of node {nid} carries arrays"
    assert seen == set(REPLY_RECORDS)
    assert all((optimizer_state.STATE_KEY in ctx.state) == carry for ctx in grid.contexts.values())
    # and the masked vector is not the plaintext: its words look uniform
    masked = next(r.content["masked"]["masked"].numpy() for t, _, r in grid.sent if t == "train.secagg_mask")
    bits = np.unpackbits(masked.view(np.uint8))
    assert abs(bits.mean() - 0.5) < 4 * 0.5 / np.sqrt(bits.size)


@pytest.mark.parametrize("stage", ["train.secagg_share", "train.secagg_mask", "train.secagg_confirm",
                                   "train.secagg_unmask"])
def test_two_of_eight_nodes_drop_and_the_round_completes_with_the_survivors(run_config, tmp_path, stage):
    grid, coord, inputs, _ = federation(run_config, tmp_path)
    gone = [grid.node_ids[1], grid.node_ids[6]]
    grid.drop_at = {nid: stage for nid in gone}
    summary = coord.train(1, {})
    assert summary["aggregation"] == "fedavg"
    # a node that still sent its masked vector (gone only at unmask) is in the sum
    in_sum = grid.node_ids if stage in ("train.secagg_confirm", "train.secagg_unmask") else [n for n in grid.node_ids if n not in gone]
    assert summary["aggregated"] == len(in_sum)
    assert sorted(summary["dropped_nodes"]) == sorted(str(n) for n in set(grid.node_ids) - set(in_sum))
    (delta_sum, total), = coord.strategy.calls
    want, _ = _expected_mean(inputs, in_sum)
    assert _relative_error(flatten(delta_sum).astype(np.float64) / total, want) <= 1e-4


def test_more_dropouts_than_the_threshold_allows_abort_and_keep_the_global_adapter(run_config, tmp_path):
    grid, coord, _, _ = federation(run_config, tmp_path)
    before = {n: a.copy() for n, a in coord.global_arrays.items()}
    grid.drop_at = {nid: "train.secagg_mask" for nid in grid.node_ids[:4]}  # 4 of 8 > 7 - threshold 5
    summary = coord.train(1, {})
    assert summary["aggregation"] == "aborted" and "survivor set of at least 5" in summary["secagg_error"]
    assert sorted(summary["dropped_nodes"]) == sorted(str(n) for n in grid.node_ids[:4])
    assert coord.strategy.calls == []
    assert all(np.array_equal(before[n], a) for n, a in coord.global_arrays.items())
    for nid, context in grid.contexts.items():  # every node still present has erased its round secrets
        assert nid in grid.drop_at or not any(k.startswith("secagg.") for k in context.state)


def _tamper_adapter_of(victim):
    def tamper(msg):  # a server trying to isolate one node's update (Pasquini et al., CCS'22)
        if msg.metadata.dst_node_id == victim and msg.metadata.message_type == "train":
            arrays = from_record(msg.content["adapter"])
            arrays[next(iter(arrays))].flat[0] += 1.0
            msg.content["adapter"] = to_record(arrays)
        return msg
    return tamper


@pytest.mark.adversarial
def test_a_server_that_sends_different_adapters_makes_every_node_refuse_before_sharing_a_key(
        run_config, tmp_path, monkeypatch):
    grid, coord, _, _ = federation(run_config, tmp_path)
    before = {n: a.copy() for n, a in coord.global_arrays.items()}
    grid.tamper = _tamper_adapter_of(grid.node_ids[3])
    monkeypatch.setattr(SecAggServer, "admit", lambda self, adverts: adverts)  # a malicious server forwards all
    nodes: dict = {}
    summary = coord.train(1, nodes)
    assert summary["aggregation"] == "aborted"
    assert coord.strategy.calls == []
    assert all(np.array_equal(before[n], a) for n, a in coord.global_arrays.items())
    assert not any(t == "train.secagg_share" and not r.has_error() for t, _, r in grid.sent)  # no share sent
    errors = [n.get("error", "") for n in nodes.values()]
    assert all("different global adapter" in e for e in errors), errors


def test_an_honest_coordinator_leaves_out_a_node_that_trained_from_another_adapter(run_config, tmp_path):
    grid, coord, _, _ = federation(run_config, tmp_path)
    victim = grid.node_ids[3]
    grid.tamper = _tamper_adapter_of(victim)
    nodes: dict = {}
    summary = coord.train(1, nodes)
    assert summary["aggregation"] == "fedavg" and summary["aggregated"] == NODES - 1
    assert nodes[str(victim)]["status"] == "rejected" and "different global adapter" in nodes[str(victim)]["error"]


@pytest.mark.adversarial
def test_the_coordinator_leaves_out_a_node_claiming_a_weight_above_the_cap(run_config, tmp_path, monkeypatch):
    """A malicious node signs a weight of 1e12 (to zero out everyone else's update in the sum)."""
    grid, coord, _, _ = federation(run_config, tmp_path)
    honest = ClientSession.advertise

    def inflated(session):
        advert = honest(session)
        if session.trust.name != "hospital-2":
            return advert
        return dataclasses.replace(advert, weight=1e12).signed(session.trust.signing_key)
    monkeypatch.setattr(ClientSession, "advertise", inflated)
    nodes: dict = {}
    summary = coord.train(1, nodes)
    liar = next(n for n in nodes.values() if n.get("name") == "hospital-2")
    assert summary["aggregation"] == "fedavg" and summary["aggregated"] == NODES - 1
    assert liar["status"] == "rejected" and "above the announced cap" in liar["error"]
    assert len(coord.strategy.calls) == 1 and coord.strategy.calls[0][1] < NODES * 1000  # the sum of real counts


def test_secure_aggregation_can_be_switched_off_for_comparison(run_config, tmp_path):
    grid, coord, _, _ = federation(run_config, tmp_path, **{"secagg.enabled": False})
    nodes: dict = {}
    summary = coord.train(1, nodes)
    assert summary["secure_aggregation"] is False and summary["aggregated"] == NODES
    size = sum(a.size for a in coord.global_arrays.values())
    for mtype, _, reply in grid.sent:
        assert mtype == "train"
        names = list(from_record(reply.content["delta"]))
        assert names == list(coord.global_arrays)  # LoRA tensors only, never base weights
    assert all(n["bytes_sent"] >= 4 * size for n in nodes.values())


def test_node_refuses_to_mask_a_malformed_delta_and_keeps_no_state(tiny_peft):
    from flwr.app import RecordDict

    from fedtune.common.adapters import AdapterMismatch

    model = tiny_peft[0]
    g = get_adapter_arrays(model)
    state = RecordDict()
    bad_shape = {n: (a[:1] if i == 0 else a) for i, (n, a) in enumerate(g.items())}
    with_nan = {n: a.copy() for n, a in g.items()}
    next(iter(with_nan.values())).flat[0] = np.nan
    renamed = {("x" + n if i == 0 else n): a for i, (n, a) in enumerate(g.items())}
    for update in (bad_shape, with_nan, renamed):
        with pytest.raises(AdapterMismatch):
            secagg_client.start(state, TRUST, 7, 1, g, update, 10, 1.0, 100.0)
        assert len(state) == 0
    big = {n: np.full_like(a, 1.0) for n, a in g.items()}
    secagg_client.start(state, TRUST, 7, 1, g, big, 10, 1.0, 100.0)
    assert np.linalg.norm(state["secagg.input"]["delta"].numpy()) == pytest.approx(1.0, rel=1e-5)


def test_a_stage_for_another_round_is_refused_and_erases_the_secrets(tiny_peft):
    from flwr.app import ConfigRecord, RecordDict

    g = get_adapter_arrays(tiny_peft[0])
    state = RecordDict()
    secagg_client.start(state, TRUST, 7, 2, g, g, 10, 1.0, 100.0)
    with pytest.raises(SecAggError, match="round"):
        secagg_client.share(state, ConfigRecord({"round": 1}), TRUST)
    assert len(state) == 0


def test_a_node_whose_data_file_is_missing_reports_it_and_the_round_goes_on(run_config, tmp_path, caplog):
    grid, coord, _, _ = federation(run_config, tmp_path)
    broken = grid.node_ids[2]
    grid.contexts[broken].node_config = {"data-path": str(tmp_path / "nowhere.jsonl"), "name": "st-elsewhere",
                                         "state-dir": str(tmp_path / "st-elsewhere"),
                                         **roster_for(tmp_path / "keys", ["st-elsewhere"])["st-elsewhere"]}
    nodes: dict = {}
    summary = coord.train(1, nodes)
    assert summary["aggregation"] == "fedavg" and summary["aggregated"] == NODES - 1
    assert nodes[str(broken)]["status"] == "error" and "nowhere.jsonl" in nodes[str(broken)]["error"]
    assert any("nowhere.jsonl" in r.getMessage() for r in caplog.records)  # the node's own log, for its operator


def test_a_deployed_node_refuses_to_send_its_delta_in_the_clear(run_config, tmp_path):
    grid, coord, _, _ = federation(run_config, tmp_path, **{"secagg.enabled": False})
    deployed = grid.node_ids[0]
    grid.contexts[deployed].node_config = {"data-path": str(tmp_path / "d.jsonl"), "state-dir": str(tmp_path / "s")}
    nodes: dict = {}
    coord.train(1, nodes)
    assert nodes[str(deployed)]["status"] == "refused" and "secure aggregation" in nodes[str(deployed)]["error"]
    assert not any(nid == deployed and "delta" in r.content for _, nid, r in grid.sent if not r.has_error())


def test_a_node_with_bad_records_refuses_its_file_with_the_data_check_lines_and_the_round_goes_on(
        run_config, tmp_path, caplog):
    from fedtune.common.data import RecordSpec, read_examples

    bad = tmp_path / "records.jsonl"
    bad.write_bytes(b'{"prompt": "ok", "completion": "yes"}\n{oops\n{"prompt": "", "completion": "x"}\n'
                    b'{"prompt": "caf\xe9", "completion": "x"}\n')
    expected = [str(p) for p in read_examples(bad, RecordSpec()).errors]  # what `fedtune data check` lists
    assert expected == ["line 2: bad JSON (Expecting property name enclosed in double quotes at character 2)",
                        "line 3: empty text in field 'prompt'",
                        "line 4: not valid UTF-8 (invalid continuation byte at byte 15); save the file as UTF-8"]
    grid, coord, _, _ = federation(run_config, tmp_path)
    broken = grid.node_ids[1]
    grid.contexts[broken].node_config = {"data-path": str(bad), "name": "st-typo", "state-dir": str(tmp_path / "s"),
                                         **roster_for(tmp_path / "keys", ["st-typo"])["st-typo"]}
    nodes: dict = {}
    summary = coord.train(1, nodes)
    assert summary["aggregation"] == "fedavg" and summary["aggregated"] == NODES - 1
    error = nodes[str(broken)]["error"]
    assert nodes[str(broken)]["status"] == "error" and all(line in error for line in expected)
    assert any(all(line in r.getMessage() for line in expected) for r in caplog.records)  # the node's log


def test_ffa_lora_round_under_secagg_sends_and_sums_only_b_and_fedadam_leaves_a_untouched(run_config, tmp_path):
    """lora.freeze-a + federation.strategy = fedadam through real rounds: every node's masked input is the size
    of the B matrices only (half the upload and the noised values at r x (in + out) per module), the secure sum
    covers exactly those, and the new global adapter keeps every A bit for bit."""
    cfg = RunConfig.from_flat({**run_config, "lora.freeze-a": True, "federation.strategy": "fedadam",
                               "federation.server-lr": 0.01})
    grid = LoopbackGrid(4, cfg.to_flat())
    coord = Coordinator(grid, cfg, run_id=7)
    sizes = []
    grid.observe = lambda mtype, nid, reply, context: sizes.append(context.state["secagg.input"]["delta"].numpy().size) \
        if mtype == "train" and not reply.has_error() and "secagg.input" in context.state else None
    before = dict(coord.global_arrays)
    summary = coord.train(1, {})
    assert summary["aggregated"] == 4 and summary["aggregation"] == "fedadam"
    b_size = sum(a.size for n, a in before.items() if "lora_B" in n)
    assert sizes == [b_size] * 4 and b_size < sum(a.size for a in before.values())
    after = coord.global_arrays
    assert all(np.array_equal(after[n], before[n]) for n in before if "lora_A" in n)
    assert any(not np.array_equal(after[n], before[n]) for n in before if "lora_B" in n)
    assert set(coord.strategy.state_arrays()) == {f"{p}/{n}" for p in ("m", "v") for n in before if "lora_B" in n}


def test_a_node_carries_its_own_moments_into_its_next_round_and_a_fresh_node_starts_without(run_config, tmp_path,
                                                                                            monkeypatch):
    """Round 2's DP stepper starts from exactly the moments round 1 left in that node's state."""
    grid, coord, _, _ = federation(run_config, tmp_path, **{"train.carry-optimizer-state": True})
    given = []
    real = fedtune.node.local_round.DPStepper

    def spy(*args, moments=None, **kwargs):
        given.append(None if moments is None else {k: v.copy() for k, v in moments.items()})
        return real(*args, moments=moments, **kwargs)

    monkeypatch.setattr(fedtune.node.local_round, "DPStepper", spy)
    coord.train(1, {})
    assert given == [None] * NODES
    kept = {nid: optimizer_state.load(ctx.state) for nid, ctx in grid.contexts.items()}
    steps = RunConfig.from_flat(run_config).train.local_steps
    for moments in kept.values():
        assert {float(v[0]) for k, v in moments.items() if k.endswith("/step")} == {steps}
    given.clear()
    coord.train(2, {})
    for nid, moments in zip(grid.node_ids, given):  # nodes train in id order on the loopback grid
        assert moments.keys() == kept[nid].keys()
        assert all(np.array_equal(moments[k], kept[nid][k]) for k in moments)
    assert all({float(v[0]) for k, v in optimizer_state.load(ctx.state).items() if k.endswith("/step")} == {2 * steps}
               for ctx in grid.contexts.values())
