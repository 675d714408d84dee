"""SecAgg+ protocol core: correctness under dropouts, thresholds, consistency, mask quality."""

import hashlib

import numpy as np
import pytest

from fedtune.common.secagg.crypto import SecAggError, prg_mask, recover_secret, share_secret
from fedtune.common.secagg.params import Encoding, clip_l2, degree, neighbours, threshold
from fedtune.common.secagg.protocol import ClientSession, Setup, unmask_sum

L = 2000


def drive(vectors: dict[int, np.ndarray], drop: dict[int, str] | None = None, hashes: dict[int, bytes] | None = None,
          dropout: float = 1 / 3):
    """Run the four stages in memory. ``drop[i]`` = stage at which node i disappears:
    'advertise' (never sends keys), 'share' (keys but no shares), 'mask' (shares but no y),
    'unmask' (y but no reveals)."""
    drop, order = drop or {}, sorted(vectors)
    k = degree(len(order))
    setup = Setup(b"run-1|round-1", neighbours(order, k), threshold(k, dropout), L)
    model = hashlib.sha256(b"global adapter").digest()
    clients = {i: ClientSession(setup, i, (hashes or {}).get(i, model)) for i in order}
    gone = lambda stage: {i for i, s in drop.items() if s == stage}  # noqa: E731

    keys = {i: clients[i].advertise() for i in order if i not in gone("advertise")}
    outbox = {i: clients[i].share_keys({j: keys[j] for j in setup.neighbours[i] if j in keys})
              for i in keys if i not in gone("share")}
    inbox: dict[int, dict[int, bytes]] = {i: {} for i in order}
    for i, cts in outbox.items():
        for j, ct in cts.items():
            inbox[j][i] = ct
    shared = {i: set(inbox[i]) for i in outbox}
    masked = {i: clients[i].mask(inbox[i], vectors[i]) for i in outbox if i not in gone("mask")}
    survivors = set(masked)
    dropped = set(outbox) - survivors
    reveals = {j: clients[j].unmask(survivors, dropped) for j in survivors if j not in gone("unmask")}
    return unmask_sum(setup, keys, shared, masked, reveals), survivors, masked


def _inputs(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return {i: rng.integers(0, 2**32, size=L, dtype=np.uint64).astype(np.uint32) for i in range(1, n + 1)}


def _sum(vectors, ids):
    total = np.zeros(L, dtype=np.uint32)
    for i in ids:
        total = total + vectors[i]
    return total


def test_no_dropouts_gives_the_exact_sum():
    x = _inputs()
    total, survivors, _ = drive(x)
    assert survivors == set(x) and np.array_equal(total, _sum(x, x))


@pytest.mark.parametrize("stage", ["advertise", "share", "mask", "unmask"])
def test_two_of_eight_nodes_drop_and_the_round_completes(stage):
    x = _inputs()
    total, survivors, _ = drive(x, {3: stage, 6: stage})
    expected_in = set(x) - ({3, 6} if stage != "unmask" else set())  # 'unmask' droppers sent y
    assert survivors == expected_in
    assert np.array_equal(total, _sum(x, expected_in))


def test_more_dropouts_than_the_threshold_allows_abort():
    x = _inputs()  # n = 8: complete graph, k = 7, t = 5 -> at most 2 neighbours may vanish
    with pytest.raises(SecAggError, match="too many dropouts"):
        drive(x, {2: "mask", 4: "mask", 7: "mask"})


def test_secagg_plus_graph_for_larger_federations():
    x = _inputs(n=16, seed=1)  # k = 8 neighbours, t = 6
    assert degree(16) == 8 and threshold(8, 1 / 3) == 6
    total, survivors, _ = drive(x, {5: "mask", 11: "share"})
    assert np.array_equal(total, _sum(x, survivors)) and survivors == set(x) - {5, 11}


def test_inconsistent_global_adapters_abort_the_round():
    x = _inputs()
    other = hashlib.sha256(b"a different adapter").digest()
    with pytest.raises(SecAggError, match="different global adapter"):
        drive(x, hashes={3: other})


def test_masked_vectors_look_uniform_and_differ_from_the_plaintext():
    x = {i: np.zeros(L, dtype=np.uint32) for i in range(1, 9)}  # worst case: all-zero inputs
    _, _, masked = drive(x)
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


def test_setup_and_node_state_survive_flower_config_records_between_stages():
    """As in Flower: the setup travels in a message and each node's session lives in context.state
    (a ConfigRecord) between stages. Round-trip both at every stage; the sum must stay exact."""
    from flwr.app import ConfigRecord

    x = _inputs()
    order = sorted(x)
    k = degree(len(order))
    setup = Setup(b"run-9|round-2", neighbours(order, k), threshold(k, 1 / 3), L)
    setup = Setup.from_config(dict(ConfigRecord(setup.to_config())))
    model = hashlib.sha256(b"adapter").digest()

    def reload(session):  # what the node's next message handler will see
        return ClientSession.from_config(setup, dict(ConfigRecord(session.to_config())))

    sessions = {i: ClientSession(setup, i, model) for i in order}
    keys = {i: s.advertise() for i, s in sessions.items()}
    sessions = {i: reload(s) for i, s in sessions.items()}
    outbox = {i: s.share_keys({j: keys[j] for j in setup.neighbours[i]}) for i, s in sessions.items()}
    sessions = {i: reload(s) for i, s in sessions.items()}
    inbox = {j: {i: outbox[i][j] for i in order if j in outbox[i]} for j in order}
    masked = {i: s.mask(inbox[i], x[i]) for i, s in sessions.items() if i != 5}  # node 5 drops here
    sessions = {i: reload(s) for i, s in sessions.items()}
    reveals = {j: sessions[j].unmask(set(masked), {5}) for j in masked}
    total = unmask_sum(setup, keys, {i: set(inbox[i]) for i in order}, masked, reveals)
    assert np.array_equal(total, _sum(x, set(order) - {5}))


def test_malformed_peer_state_is_rejected_not_executed():
    order = list(range(1, 5))
    setup = Setup(b"r", neighbours(order, degree(4)), 3, 8)
    bad = setup.to_config()
    bad["neighbours"] = bad["neighbours"][:-1]
    with pytest.raises(SecAggError, match="malformed neighbour graph"):
        Setup.from_config(bad)
    state = ClientSession(setup, 1, b"h").to_config()
    state["c_private"] = b"short"
    with pytest.raises(SecAggError, match="length 32"):
        ClientSession.from_config(setup, state)
