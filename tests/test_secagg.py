"""SecAgg+ protocol core: correctness under dropouts, thresholds, consistency, mask quality."""

import numpy as np
import pytest

from fedtune.common.secagg.crypto import SecAggError, prg_mask, recover_secret, share_secret
from fedtune.common.secagg.params import Encoding, clip_l2, degree, threshold
from fedtune.common.secagg.protocol import ClientSession

from secagg_round import L, STAGES, Round, inputs, total_of


def test_no_dropouts_gives_the_exact_sum():
    x = inputs()
    rnd = Round()
    total, survivors, _ = rnd.run(x)
    assert survivors == set(x) and np.array_equal(total, total_of(x, x)) and rnd.refused == {}


@pytest.mark.parametrize("stage", STAGES)
def test_two_of_eight_nodes_drop_and_the_round_completes(stage):
    x = inputs()
    rnd = Round()
    total, survivors, _ = rnd.run(x, {3: stage, 6: stage})
    assert rnd.refused == {}
    expected_in = set(x) - ({3, 6} if stage in ("advertise", "share", "mask") else set())  # later: y was sent
    assert survivors == expected_in
    assert np.array_equal(total, total_of(x, expected_in))


def test_more_dropouts_than_the_threshold_allows_abort():
    x = inputs()  # n = 8: complete graph, k = 7, t = 5 -> at most 2 neighbours may vanish
    with pytest.raises(SecAggError, match="survivors|too many dropouts"):
        Round().run(x, {2: "mask", 4: "mask", 7: "mask"})


def test_secagg_plus_graph_for_larger_federations():
    x = inputs(n=16, seed=1)  # k = 8 neighbours, t = 6
    assert degree(16) == 8 and threshold(8, 1 / 3) == 6
    total, survivors, _ = Round(n=16).run(x, {5: "mask", 11: "share"})
    assert np.array_equal(total, total_of(x, survivors)) and survivors == set(x) - {5, 11}


def test_masked_vectors_look_uniform_and_differ_from_the_plaintext():
    x = {i: np.zeros(L, dtype=np.uint32) for i in range(1, 9)}  # worst case: all-zero inputs
    _, _, masked = Round().run(x)
    bits = np.unpackbits(np.concatenate(list(masked.values())).view(np.uint8))
    n = bits.size
    assert abs(bits.mean() - 0.5) < 4 * 0.5 / np.sqrt(n)  # within 4 sigma of a fair coin
    per_position = np.unpackbits(masked[1].view(np.uint8)).reshape(L, 32).mean(0)
    assert np.all(np.abs(per_position - 0.5) < 4 * 0.5 / np.sqrt(L))
    assert all(np.mean(m == 0) < 0.01 for m in masked.values())


def test_prg_uses_the_whole_seed_and_shamir_needs_the_threshold():
    a, b = bytes(32), bytes(31) + b"\x01"  # differ in the last byte only
    assert not np.array_equal(prg_mask(a, 64), prg_mask(b, 64))
    secret = bytes(range(32))
    shares = share_secret(secret, 3, [1, 2, 3, 4, 5])
    assert recover_secret({i: shares[i] for i in (1, 4, 5)}, 3) == secret
    with pytest.raises(SecAggError):
        recover_secret({i: shares[i] for i in (1, 2)}, 3)


def test_fixed_point_weighted_sum_matches_plain_average():
    rng = np.random.default_rng(0)
    n, d = 8, 5000
    deltas = [clip_l2(rng.normal(size=d).astype(np.float32) * 0.01, 1.0)[0] for _ in range(n)]
    weights = rng.integers(50, 1000, size=n).astype(np.float64)
    enc = Encoding(clip=1.0, max_weight=1000.0, num_nodes=n)
    total = np.zeros(d, dtype=np.uint32)
    for w, x in zip(weights, deltas):
        total = total + enc.encode(w * x.astype(np.float64))
    mean = enc.decode_sum(total) / weights.sum()
    plain = sum(w * x.astype(np.float64) for w, x in zip(weights, deltas)) / weights.sum()
    rel = np.abs(mean - plain).max() / np.abs(plain).max()
    assert rel <= 1e-4, rel
    with pytest.raises(SecAggError, match="outside the encoding range"):
        enc.encode(np.array([2000.0]))  # weight above the bound: an error, never a wrap


def test_node_state_survives_flower_config_records_between_stages():
    """As in Flower: each node's session lives in context.state (a ConfigRecord) between stages.
    Round-trip every session after every stage; the sum must stay exact."""
    from flwr.app import ConfigRecord

    x = inputs()
    rnd = Round()

    class Reloading(dict):  # every access hands out the session as the next message handler rebuilds it
        def __getitem__(self, i):
            s = dict.__getitem__(self, i)
            s = ClientSession.from_config(s.trust, dict(ConfigRecord(s.to_config())))
            self[i] = s
            return s

    rnd.sessions = Reloading(rnd.sessions)
    total, survivors, _ = rnd.run(x, {5: "mask"})
    assert np.array_equal(total, total_of(x, set(x) - {5}))


def test_malformed_peer_state_is_rejected_not_executed():
    rnd = Round(n=4)
    state = rnd.sessions[1].to_config()
    state["c_private"] = b"short"
    with pytest.raises(SecAggError, match="length 32"):
        ClientSession.from_config(rnd.sessions[1].trust, state)
    state = rnd.sessions[1].to_config()
    state["params"] = state["params"][:-1]
    with pytest.raises(SecAggError, match="bytes of length"):
        ClientSession.from_config(rnd.sessions[1].trust, state)
