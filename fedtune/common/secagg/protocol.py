"""SecAgg+ (Bonawitz et al. 2017; Bell et al. 2020) as transport-free steps.

Stages, for n sampled nodes with public per-round ``Setup`` (indices, neighbour graph, t):
1. advertise   - each node sends two X25519 public keys: c (share encryption), s (pairwise masks);
2. share keys  - each node Shamir-shares its self-mask seed b and its s private key among its
                 neighbours (threshold t) and sends each neighbour its pair of shares encrypted
                 with AES-GCM under KDF(c_i, c_j); the associated data binds the round, both
                 indices and the hash of the global adapter the sender received;
3. mask        - y_i = encode(w_i * x_i) + PRG(b_i) + sum_j ±PRG(KDF(s_i, s_j))  (mod 2^32),
                 over the neighbours j whose shares reached i (+ if i < j, - otherwise);
4. unmask      - for each neighbour that sent y, a node reveals its share of that neighbour's b;
                 for each neighbour that dropped after stage 2, its share of that neighbour's s key.
                 Never both for one neighbour. Decrypting a share whose associated data carries a
                 different adapter hash fails, so inconsistent global models abort the round.
The server sums the y it received, recovers the needed b and s secrets from >= t shares each,
and removes the masks: it learns only the sum.  Transport (Flower messages) is the caller's job.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

import numpy as np

from fedtune.common.secagg.crypto import (
    KEY_BYTES, KeyPair, SecAggError, agree, decrypt, digest, encrypt, prg_mask, public_key_of, recover_secret,
    share_secret,
)
from fedtune.common.secagg.params import Encoding

_SHARE_FORMAT = ">HH32s32s"  # src index, dst index, share of b, share of the s private key
_SHARE_BYTES = struct.calcsize(_SHARE_FORMAT)


@dataclass(frozen=True)
class Setup:
    round_id: bytes  # unique per (run, round): binds keys, masks and ciphertexts to this round
    neighbours: dict[int, list[int]]  # node index (1..n) -> neighbour indices
    threshold: int
    length: int  # uint32 words per masked vector
    clip: float = 1.0  # encoding range: each node's delta has L2 norm <= clip ...
    max_weight: float = 1.0  # ... and its weight is <= max_weight (checked at the node)

    @property
    def encoding(self) -> Encoding:
        return Encoding(self.clip, self.max_weight, len(self.neighbours))

    def _ad(self, src: int, dst: int, model_hash: bytes) -> bytes:
        return digest(b"share", self.round_id, src.to_bytes(2, "big"), dst.to_bytes(2, "big"), model_hash)

    def sign(self, i: int, j: int) -> int:
        return 1 if i < j else -1

    # -- as Flower ConfigRecord values (scalars, bytes, lists): no code-executing formats ---------
    def to_config(self) -> dict:
        nodes = sorted(self.neighbours)
        return {
            "round_id": self.round_id, "threshold": self.threshold, "length": self.length, "nodes": nodes,
            "clip": float(self.clip), "max_weight": float(self.max_weight),
            "degrees": [len(self.neighbours[i]) for i in nodes],
            "neighbours": [j for i in nodes for j in self.neighbours[i]],
        }

    @classmethod
    def from_config(cls, cfg) -> "Setup":
        nodes, degrees, flat = as_ints(cfg["nodes"]), as_ints(cfg["degrees"]), as_ints(cfg["neighbours"])
        if len(nodes) != len(degrees) or sum(degrees) != len(flat):
            raise SecAggError("malformed neighbour graph")
        graph, pos = {}, 0
        for i, d in zip(nodes, degrees):
            graph[i], pos = flat[pos:pos + d], pos + d
        if any(j not in graph or j == i for i, js in graph.items() for j in js):
            raise SecAggError("neighbour graph names unknown nodes")
        clip, max_weight = float(cfg["clip"]), float(cfg["max_weight"])
        if not (clip > 0 and max_weight > 0):
            raise SecAggError("encoding bounds must be positive")
        return cls(as_bytes(cfg["round_id"]), graph, int(cfg["threshold"]), int(cfg["length"]), clip, max_weight)


# Checked readers of peer- or coordinator-supplied record values (both halves of the protocol use them).
def as_ints(values) -> list[int]:
    if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise SecAggError("expected a list of integers")
    return list(values)


def as_bytes(value, size: int | None = None) -> bytes:
    if not isinstance(value, bytes) or (size is not None and len(value) != size):
        raise SecAggError("expected bytes" + (f" of length {size}" if size else ""))
    return value


def as_bytes_list(values, size: int | None = None) -> list[bytes]:
    if not isinstance(values, list):
        raise SecAggError("expected a list of bytes")
    return [as_bytes(v, size) for v in values]


def _pair_mask(setup: Setup, my_private: bytes, peer_public: bytes) -> np.ndarray:
    return prg_mask(agree(my_private, peer_public, b"mask", setup.round_id), setup.length)


@dataclass
class ClientSession:
    """One node's secrets and view for one round (kept in the node's own state only)."""

    setup: Setup
    index: int
    model_hash: bytes
    c_key: KeyPair = field(default_factory=KeyPair.generate)
    s_key: KeyPair = field(default_factory=KeyPair.generate)
    b_seed: bytes = field(default_factory=lambda: os.urandom(KEY_BYTES))
    peer_keys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    received: dict[int, bytes] = field(default_factory=dict)  # ciphertexts from neighbours
    masked_with: list[int] = field(default_factory=list)

    # -- node state between messages (Flower context.state); secrets never leave the node ---------
    def to_config(self) -> dict:
        peers = sorted(self.peer_keys)
        received = sorted(self.received)
        return {
            "index": self.index, "model_hash": self.model_hash, "c_private": self.c_key.private,
            "s_private": self.s_key.private, "b_seed": self.b_seed, "peers": peers,
            "peer_c": [self.peer_keys[j][0] for j in peers], "peer_s": [self.peer_keys[j][1] for j in peers],
            "received_from": received, "received": [self.received[j] for j in received],
            "masked_with": list(self.masked_with),
        }

    @classmethod
    def from_config(cls, setup: Setup, cfg) -> "ClientSession":
        c_private, s_private = as_bytes(cfg["c_private"], KEY_BYTES), as_bytes(cfg["s_private"], KEY_BYTES)
        peers, received_from = as_ints(cfg["peers"]), as_ints(cfg["received_from"])
        peer_c, peer_s = as_bytes_list(cfg["peer_c"], KEY_BYTES), as_bytes_list(cfg["peer_s"], KEY_BYTES)
        received = as_bytes_list(cfg["received"])
        if len(peer_c) != len(peers) or len(peer_s) != len(peers) or len(received) != len(received_from):
            raise SecAggError("malformed SecAgg node state")
        return cls(
            setup, int(cfg["index"]), as_bytes(cfg["model_hash"]),
            KeyPair(c_private, public_key_of(c_private)), KeyPair(s_private, public_key_of(s_private)),
            as_bytes(cfg["b_seed"], KEY_BYTES), {j: (c, s) for j, c, s in zip(peers, peer_c, peer_s)},
            dict(zip(received_from, received)), as_ints(cfg["masked_with"]),
        )

    # stage 1
    def advertise(self) -> tuple[bytes, bytes]:
        return self.c_key.public, self.s_key.public

    # stage 2
    def share_keys(self, public_keys: dict[int, tuple[bytes, bytes]]) -> dict[int, bytes]:
        mine = self.setup.neighbours[self.index]
        live = [j for j in mine if j in public_keys]
        if len(live) < self.setup.threshold:
            raise SecAggError(f"only {len(live)} neighbours advertised keys; threshold is {self.setup.threshold}")
        self.peer_keys = {j: public_keys[j] for j in live}
        b_shares = share_secret(self.b_seed, self.setup.threshold, live)
        s_shares = share_secret(self.s_key.private, self.setup.threshold, live)
        out = {}
        for j in live:
            key = agree(self.c_key.private, self.peer_keys[j][0], b"share", self.setup.round_id)
            plain = struct.pack(_SHARE_FORMAT, self.index, j, b_shares[j], s_shares[j])
            out[j] = encrypt(key, plain, self.setup._ad(self.index, j, self.model_hash))
        return out

    # stage 3
    def mask(self, ciphertexts: dict[int, bytes], encoded: np.ndarray) -> np.ndarray:
        if encoded.dtype != np.uint32 or encoded.shape != (self.setup.length,):
            raise SecAggError(f"expected {self.setup.length} uint32 words to mask, got {encoded.dtype} {encoded.shape}")
        self.received = {j: ct for j, ct in ciphertexts.items() if j in self.peer_keys}
        if len(self.received) < self.setup.threshold:
            raise SecAggError(f"only {len(self.received)} neighbours shared keys; threshold is {self.setup.threshold}")
        y = encoded + prg_mask(self.b_seed, self.setup.length)
        for j in sorted(self.received):
            pm = _pair_mask(self.setup, self.s_key.private, self.peer_keys[j][1])
            y = y + pm if self.setup.sign(self.index, j) > 0 else y - pm
        self.masked_with = sorted(self.received)
        return y

    # stage 4
    def unmask(self, survivors: set[int], dropped: set[int]) -> dict[int, tuple[str, bytes]]:
        if survivors & dropped:
            raise SecAggError("the server asked for both secrets of the same node")
        if self.index not in survivors:
            raise SecAggError("this node is not listed among the survivors")
        out = {}
        for j, ct in self.received.items():
            if j not in survivors and j not in dropped:
                continue
            key = agree(self.c_key.private, self.peer_keys[j][0], b"share", self.setup.round_id)
            try:
                plain = decrypt(key, ct, self.setup._ad(j, self.index, self.model_hash))
            except SecAggError as exc:  # reveal nothing at all: the whole round must abort
                raise SecAggError(f"key share from node {j}: {exc}; the nodes saw different global adapters "
                                  "(or the share was altered), refusing to unmask") from exc
            if len(plain) != _SHARE_BYTES:
                raise SecAggError("malformed share")
            src, dst, b_share, s_share = struct.unpack(_SHARE_FORMAT, plain)
            if (src, dst) != (j, self.index):
                raise SecAggError("share addressed to another pair of nodes")
            out[j] = ("b", b_share) if j in survivors else ("s", s_share)
        return out


def unmask_sum(
    setup: Setup,
    public_keys: dict[int, tuple[bytes, bytes]],
    shared: dict[int, set[int]],
    masked: dict[int, np.ndarray],
    reveals: dict[int, dict[int, tuple[str, bytes]]],
) -> np.ndarray:
    """Server side: the uint32 sum of the survivors' encoded inputs.

    ``shared[i]`` are the neighbours whose ciphertexts were forwarded to i (i masked with them);
    ``masked`` holds the survivors' y; ``reveals[j][i]`` is what survivor j revealed about i.
    Raises SecAggError (nothing is released) if any needed secret has fewer than t shares.
    """
    survivors = set(masked)
    total = np.zeros(setup.length, dtype=np.uint32)
    for y in masked.values():
        total = total + y
    by_target: dict[int, dict[int, bytes]] = {}
    for j, items in reveals.items():
        for i, (kind, share) in items.items():
            expected = "b" if i in survivors else "s"
            if kind != expected:
                raise SecAggError(f"node {j} revealed the wrong secret of node {i}")
            by_target.setdefault(i, {})[j] = share
    dropped = {j for i in survivors for j in shared[i] if j not in survivors}
    for i in sorted(survivors | dropped):  # all-or-nothing: check every needed secret before recovering any
        if len(by_target.get(i, {})) < setup.threshold:
            raise SecAggError(f"too many dropouts: node {i}'s masks can only be removed with {setup.threshold} "
                              f"shares (the threshold) but {len(by_target.get(i, {}))} arrived")
    for i in survivors:
        b = recover_secret(by_target.get(i, {}), setup.threshold)
        total = total - prg_mask(b, setup.length)
    for j in dropped:
        s_private = recover_secret(by_target.get(j, {}), setup.threshold)
        if public_key_of(s_private) != public_keys[j][1]:
            raise SecAggError(f"recovered mask key of node {j} does not match its advertised key")
        for i in survivors:
            if j in shared[i]:
                pm = _pair_mask(setup, s_private, public_keys[i][1])
                # i added sign(i, j) * pm; remove it
                total = total - pm if setup.sign(i, j) > 0 else total + pm
    return total
