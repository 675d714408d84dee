"""The attacks of issue 21, played against the SecAgg+ of commit 5b2aed7 (before active security).

Runs only against that commit's API (``Setup``/``ClientSession`` without signatures)::

    git worktree add /tmp/before 5b2aed7
    PYTHONPATH=/tmp/before .venv/bin/python docs/evidence/attacks_on_5b2aed7.py

Each attack prints what the malicious coordinator (or node) obtained.  On main the same attacks
are tests (``pytest -m adversarial``) that the honest nodes refuse.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np

from fedtune.common.secagg.crypto import KeyPair, SecAggError, agree, decrypt, prg_mask, recover_secret
from fedtune.common.secagg.params import Encoding, degree, neighbours, threshold
from fedtune.common.secagg.protocol import ClientSession, Setup, _pair_mask, unmask_sum

L, MODEL, TARGET = 64, hashlib.sha256(b"global adapter").digest(), 1


def inputs(n, seed=0):
    rng = np.random.default_rng(seed)
    return {i: rng.integers(0, 2**32, size=L, dtype=np.uint64).astype(np.uint32) for i in range(1, n + 1)}


def honest_setup(n, t=None, graph=None):
    k = degree(n)
    return Setup(b"run-1|round-1", graph or neighbours(list(range(1, n + 1)), k), t or threshold(k, 0.35), L)


def share_and_mask(setup, x, keys_for=None):
    """Stages 1-3 as the old nodes run them; ``keys_for(i, keys)`` lets the coordinator choose the keys node i sees."""
    nodes = {i: ClientSession(setup, i, MODEL) for i in x}
    keys = {i: s.advertise() for i, s in nodes.items()}
    outbox = {i: s.share_keys((keys_for or (lambda i, k: k))(i, keys)) for i, s in nodes.items()}
    inbox = {i: {j: cts[i] for j, cts in outbox.items() if i in cts} for i in x}
    masked = {i: s.mask(inbox[i], x[i]) for i, s in nodes.items()}
    return nodes, keys, outbox, inbox, masked


def strip(setup, y, b, own, keys, partners):
    """The coordinator removes node ``own``'s masks once it holds its b and its partners' mask keys."""
    x = y - prg_mask(b, L)
    for j, s_j in partners.items():
        pm = _pair_mask(setup, s_j, keys[own][1])
        x = x - pm if setup.sign(own, j) > 0 else x + pm
    return x


def unmask_attack(n):
    x = inputs(n)
    setup = honest_setup(n)
    nodes, keys, _, _, masked = share_and_mask(setup, x)
    others = set(x) - {TARGET}
    reveals = {m: nodes[m].unmask({m, TARGET}, others - {m}) for m in others}  # each node: "survivors = {you, target}"
    reveals[TARGET] = nodes[TARGET].unmask({TARGET}, others)
    b = recover_secret({m: r[TARGET][1] for m, r in reveals.items() if TARGET in r}, setup.threshold)
    partners = {}
    for j in setup.neighbours[TARGET]:
        shares = {m: r[j][1] for m, r in reveals.items() if j in r and r[j][0] == "s"}
        partners[j] = recover_secret(shares, setup.threshold)
    got = strip(setup, masked[TARGET], b, TARGET, keys, partners)
    return np.array_equal(got, x[TARGET])


def key_substitution(n=4):
    """The coordinator hands the victim its own share-encryption keys for every peer and reads all its shares."""
    x, setup = inputs(n), honest_setup(n)
    fake = {j: KeyPair.generate() for j in x}
    nodes, keys, outbox, _, masked = share_and_mask(
        setup, x, lambda i, real: {j: ((fake[j].public if i == TARGET else k[0]), k[1]) for j, k in real.items()})
    shares = {}
    for j, ct in outbox[TARGET].items():
        key = agree(fake[j].private, keys[TARGET][0], b"share", setup.round_id)
        shares[j] = struct.unpack(">HH32s32s", decrypt(key, ct, setup._ad(TARGET, j, MODEL)))
    b = recover_secret({j: s[2] for j, s in shares.items()}, setup.threshold)
    s_private = recover_secret({j: s[3] for j, s in shares.items()}, setup.threshold)
    x_hat = masked[TARGET] - prg_mask(b, L)
    for j in setup.neighbours[TARGET]:
        pm = _pair_mask(setup, s_private, keys[j][1])
        x_hat = x_hat - pm if setup.sign(TARGET, j) > 0 else x_hat + pm
    return np.array_equal(x_hat, x[TARGET])


def sybils():
    """One real node and two coordinator-made ones: the 'sum' minus the Sybils' known inputs is the real input."""
    x = inputs(3)
    setup = honest_setup(3)
    nodes, keys, _, _, masked = share_and_mask(setup, x)  # nodes 2, 3 are the coordinator's: it knows x[2], x[3]
    reveals = {j: nodes[j].unmask({1, 2, 3}, set()) for j in x}
    total = unmask_sum(setup, keys, {i: set(setup.neighbours[i]) for i in x}, masked, reveals)
    return np.array_equal(total - x[2] - x[3], x[1])


def accepted(make):
    try:
        make()
        return True
    except SecAggError as exc:
        return f"refused: {exc}"


def low_threshold_and_one_neighbour_graph():
    x = inputs(4)
    one = {1: [2], 2: [1], 3: [4], 4: [3]}
    return (accepted(lambda: share_and_mask(honest_setup(4, t=1), x)),
            accepted(lambda: share_and_mask(honest_setup(4, t=1, graph=one), x)))


def different_clip_bounds():
    """Round parameters are the coordinator's word to each node: nothing compares them across nodes."""
    x = inputs(4)
    setups = {i: Setup(b"run-1|round-1", neighbours([1, 2, 3, 4], 3), 2, L, clip=1.0 if i != TARGET else 1e-6)
              for i in x}
    nodes = {i: ClientSession(setups[i], i, MODEL) for i in x}
    keys = {i: s.advertise() for i, s in nodes.items()}
    outbox = {i: s.share_keys(keys) for i, s in nodes.items()}
    inbox = {i: {j: cts[i] for j, cts in outbox.items() if i in cts} for i in x}
    return accepted(lambda: {i: s.mask(inbox[i], x[i]) for i, s in nodes.items()})


def two_peers():
    x = inputs(2)
    return accepted(lambda: share_and_mask(honest_setup(2), x))


def inflated_weight():
    """The old coordinator sized the fixed-point unit from the largest self-reported weight."""
    honest = np.full(1000, 0.001) * 200  # weight 200, |delta| small but real
    enc = Encoding(clip=1.0, max_weight=1e12, num_nodes=8)  # one node claimed 1e12
    return float(np.abs(enc.decode_sum(enc.encode(honest)) - honest).max() / honest.max())


def bad_share():
    x = inputs(8)
    setup = honest_setup(8)
    nodes, keys, _, _, masked = share_and_mask(setup, x)
    reveals = {j: nodes[j].unmask(set(x), set()) for j in x}
    kind, share = reveals[5][TARGET]
    reveals[5][TARGET] = (kind, bytes(b ^ 0xFF for b in share))
    total = unmask_sum(setup, keys, {i: set(setup.neighbours[i]) for i in x}, masked, reveals)
    exact = sum((x[i].astype(np.uint64) for i in x), np.zeros(L, np.uint64)).astype(np.uint32)
    return "no error raised; sum correct: " + str(np.array_equal(total, exact))


if __name__ == "__main__":
    for n in (3, 4, 8):
        print(f"unmask attack, n={n}: target's exact input recovered: {unmask_attack(n)}")
    print(f"key substitution, n=4: target's exact input recovered: {key_substitution()}")
    print(f"sybils (1 real node + 2 coordinator-made): real input recovered: {sybils()}")
    t1, graph = low_threshold_and_one_neighbour_graph()
    print(f"threshold t=1 accepted by every node: {t1}; one-neighbour graph accepted: {graph}")
    print(f"different clip bound sent to one node: masks computed by every node: {different_clip_bounds()}")
    print(f"a round of 2 nodes (each learns the other's update): accepted: {two_peers()}")
    print(f"a node claiming weight 1e12: an honest node's update decoded with relative error {inflated_weight():.3g}")
    print(f"a flipped share of b from one node: {bad_share()}")
