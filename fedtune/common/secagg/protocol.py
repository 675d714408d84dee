"""SecAgg+ secure against an active coordinator (Bonawitz et al. 2017, malicious-server variant;
Bell et al. 2020 for the sparse graph) as transport-free steps.

Stages, node side (``ClientSession``), each refusing with SecAggError rather than leaking:
0. advertise  - two fresh X25519 public keys (c: share encryption, s: pairwise masks), the node's
                weight (<= the announced cap) and a commitment to its self-mask seed b, with the
                round parameters, signed by the node's long-term Ed25519 key (``round.Advert``);
1. share keys - the node checks *every* advert of the sampled set against its own pinned roster
                (no substituted keys, no Sybils) and its own round parameters (one global adapter,
                one clip bound, one weight cap for everyone), that the set holds at least its
                ``min-peers``, and that the threshold and graph are the ones derived from the set
                (t >= its ``min-threshold`` and a strict majority of its neighbours).  Then it
                Shamir-shares b and its s private key among its neighbours, each pair of shares
                AES-GCM-encrypted under KDF(c_i, c_j);
2. mask       - y_i = encode(w_i x_i) + PRG(b_i) + sum_j ±PRG(KDF(s_i, s_j)) (mod 2^32);
3. confirm    - the node signs (setup digest, survivor set) once per round; a second, different
                survivor set is refused;
4. unmask     - only with >= quorum roster-valid signatures on the *same* (setup, survivors) from
                survivors: then all honest nodes reveal against one survivor set, so no node's b and
                s are both revealed.  b-shares for surviving neighbours, s-shares for neighbours
                that shared keys but sent no masked vector: derived by the node, not told.
Coordinator side, ``unmask_sum``: sums the masked vectors and removes the masks; every recovered
secret is checked (b against the signed commitment, s against the signed public key), and a bad
share is attributed to the node that revealed it (``BadShares``).
"""

from __future__ import annotations

import itertools
import os
import struct
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from fedtune.common.secagg.crypto import (
    KEY_BYTES, KeyPair, SecAggError, agree, commit, decrypt, encrypt, prg_mask, public_key_of, recover_secret,
    share_secret, sign, verify,
)
from fedtune.common.secagg.roster import Roster
from fedtune.common.secagg.round import (
    CONFIRM, Advert, RoundParams, Setup, adverts_from_config, adverts_to_config, as_bytes, as_bytes_list, as_ints,
)

_SHARE_FORMAT = ">HH32s32s"  # src index, dst index, share of b, share of the s private key
_SHARE_BYTES = struct.calcsize(_SHARE_FORMAT)
_MAX_SUBSETS = 5000  # attribution search bound (C(k, t) is small for the degrees we use)


class BadShares(SecAggError):
    """A recovered secret failed its check; ``culprits`` are the node indices to blame."""

    def __init__(self, message: str, culprits: set[int]):
        super().__init__(message)
        self.culprits = culprits


@dataclass(frozen=True)
class Trust:
    """What a node brings from its own config: whom it believes, and the least it accepts."""
    name: str
    signing_key: bytes  # raw Ed25519 private key
    roster: Roster  # name -> public key (key_of raises SecAggError for strangers)
    min_peers: int = 3  # smallest survivor set (itself included) it hides in
    min_threshold: int = 2  # smallest threshold it accepts


def b_commitment(params: RoundParams, name: str, b_seed: bytes) -> bytes:
    return commit(b"b-seed", params.round_id + name.encode(), b_seed)


def _pair_mask(setup: Setup, my_private: bytes, peer_public: bytes) -> np.ndarray:
    return prg_mask(agree(my_private, peer_public, b"mask", setup.round_id), setup.length)


@dataclass
class ClientSession:
    """One node's secrets and view of one round (kept in the node's own state only)."""

    trust: Trust
    params: RoundParams
    weight: float
    c_key: KeyPair = field(default_factory=KeyPair.generate)
    s_key: KeyPair = field(default_factory=KeyPair.generate)
    b_seed: bytes = field(default_factory=lambda: os.urandom(KEY_BYTES))
    setup: Setup | None = None
    adverts: list[Advert] = field(default_factory=list)  # the sampled set, as this node checked it
    received: dict[int, bytes] = field(default_factory=dict)  # ciphertexts from neighbours
    masked_with: list[int] | None = None
    confirmed: list[int] | None = None

    @property
    def index(self) -> int:
        return self.require_setup().index_of(self.trust.name)

    def require_setup(self) -> Setup:
        if self.setup is None:
            raise SecAggError("stage out of order: this node has not shared keys in this round")
        return self.setup

    # stage 0
    def advertise(self) -> Advert:
        if not 0 < self.weight <= self.params.max_weight:
            raise SecAggError(f"weight {self.weight:g} is outside (0, the round's cap {self.params.max_weight:g}]")
        return Advert(self.trust.name, self.params, self.c_key.public, self.s_key.public, self.weight,
                      b_commitment(self.params, self.trust.name, self.b_seed)).signed(self.trust.signing_key)

    # stage 1
    def share_keys(self, adverts: list[Advert], threshold: int, graph) -> dict[int, bytes]:
        if self.setup is not None:
            raise SecAggError("asked to share keys twice in one round")
        for advert in adverts:
            advert.check(self.trust.roster, self.params)
        mine = [a for a in adverts if a.name == self.trust.name]
        ours = (self.c_key.public, self.s_key.public, self.weight, b_commitment(self.params, self.trust.name, self.b_seed))
        if len(mine) != 1 or (mine[0].c_public, mine[0].s_public, mine[0].weight, mine[0].b_commit) != ours:
            raise SecAggError("this node's own advert is missing from the round's sampled set or was replaced")
        if len(adverts) < self.trust.min_peers:
            raise SecAggError(f"only {len(adverts)} nodes in the round; this node takes part only with at least "
                              f"{self.trust.min_peers} (node config min-peers)")
        setup = Setup.derive(self.params, [a.name for a in adverts], threshold)
        least = max(setup.degree // 2 + 1, self.trust.min_threshold)
        if not least <= threshold <= setup.degree:
            raise SecAggError(f"threshold {threshold} is below {least}: a strict majority of this node's "
                              f"{setup.degree} neighbours and at least its min-threshold {self.trust.min_threshold}")
        setup.check_graph(graph)
        self.setup, self.adverts = setup, sorted(adverts, key=lambda a: a.name)
        i, live = self.index, setup.neighbours[self.index]
        b_shares = share_secret(self.b_seed, threshold, live)
        s_shares = share_secret(self.s_key.private, threshold, live)
        out = {}
        for j in live:
            key = agree(self.c_key.private, self._peer(j).c_public, b"share", setup.round_id)
            out[j] = encrypt(key, struct.pack(_SHARE_FORMAT, i, j, b_shares[j], s_shares[j]), setup.share_ad(i, j))
        return out

    def _peer(self, j: int) -> Advert:
        return self.adverts[j - 1]

    # stage 2
    def mask(self, ciphertexts: dict[int, bytes], encoded: np.ndarray) -> np.ndarray:
        setup = self.require_setup()
        if self.masked_with is not None:
            raise SecAggError("asked to mask twice in one round")
        if encoded.dtype != np.uint32 or encoded.shape != (setup.length,):
            raise SecAggError(f"expected {setup.length} uint32 words to mask, got {encoded.dtype} {encoded.shape}")
        self.received = {j: ct for j, ct in ciphertexts.items() if j in setup.neighbours[self.index]}
        if len(self.received) < setup.threshold:
            raise SecAggError(f"only {len(self.received)} neighbours shared keys; threshold is {setup.threshold}")
        y = encoded + prg_mask(self.b_seed, setup.length)
        for j in sorted(self.received):
            pm = _pair_mask(setup, self.s_key.private, self._peer(j).s_public)
            y = y + pm if setup.sign_id(self.index, j) > 0 else y - pm
        self.masked_with = sorted(self.received)
        return y

    # stage 3
    def confirm(self, survivors: list[int]) -> bytes:
        setup, survivors = self.require_setup(), sorted(set(survivors))
        if self.masked_with is None:
            raise SecAggError("asked to confirm survivors before this node masked its input")
        if self.confirmed is not None and self.confirmed != survivors:
            raise SecAggError("asked to confirm a second, different survivor set in one round: refusing")
        self._check_survivors(setup, survivors)
        self.confirmed = survivors
        return sign(self.trust.signing_key, CONFIRM, *setup.confirmation(survivors))

    def _check_survivors(self, setup: Setup, survivors: list[int]) -> None:
        if not set(survivors) <= set(range(1, len(setup.names) + 1)) or self.index not in survivors:
            raise SecAggError("the survivor set names unknown nodes or leaves this node out")
        if len(survivors) < max(setup.quorum, self.trust.min_peers):
            raise SecAggError(f"only {len(survivors)} survivors; this node reveals shares only with at least "
                              f"{max(setup.quorum, self.trust.min_peers)} (quorum {setup.quorum}, min-peers "
                              f"{self.trust.min_peers})")
        stray = set(survivors) & set(setup.neighbours[self.index]) - set(self.masked_with or [])
        if stray:
            raise SecAggError(f"survivors {sorted(stray)} never shared keys with this node")

    # stage 4
    def unmask(self, signatures: dict[int, bytes]) -> dict[int, tuple[str, bytes]]:
        setup, survivors = self.require_setup(), self.confirmed
        if survivors is None:
            raise SecAggError("asked to unmask before confirming the survivor set")
        signed = {self.index}
        for j, sig in signatures.items():
            if j not in survivors:
                raise SecAggError(f"a consistency signature from node {j}, which is not a survivor")
            if not verify(self.trust.roster.key_of(setup.names[j - 1]), sig, CONFIRM, *setup.confirmation(survivors)):
                raise SecAggError(f"'{setup.names[j - 1]}' signed a different view of the round (another survivor "
                                  "set, adapter or round parameter) or its signature is forged: refusing to unmask")
            signed.add(j)
        if len(signed) < setup.quorum:
            raise SecAggError(f"only {len(signed)} survivors confirmed this survivor set; {setup.quorum} must "
                              "before this node reveals a share")
        out = {}
        for j, ct in self.received.items():
            key = agree(self.c_key.private, self._peer(j).c_public, b"share", setup.round_id)
            try:
                plain = decrypt(key, ct, setup.share_ad(j, self.index))
            except SecAggError as exc:  # reveal nothing at all: the whole round must abort
                raise SecAggError(f"key share from node {j}: {exc}; refusing to unmask") from exc
            if len(plain) != _SHARE_BYTES:
                raise SecAggError("malformed share")
            src, dst, b_share, s_share = struct.unpack(_SHARE_FORMAT, plain)
            if (src, dst) != (j, self.index):
                raise SecAggError("share addressed to another pair of nodes")
            out[j] = ("b", b_share) if j in survivors else ("s", s_share)
        return out

    # -- node state between messages (Flower context.state); secrets never leave the node ---------
    def to_config(self) -> dict:
        cfg = {"params": self.params.pack(), "weight": float(self.weight), "c_private": self.c_key.private,
               "s_private": self.s_key.private, "b_seed": self.b_seed}
        if self.setup is not None:
            received = sorted(self.received)
            cfg.update(adverts_to_config(self.adverts), threshold=self.setup.threshold, received_from=received,
                       received=[self.received[j] for j in received])
        for key in ("masked_with", "confirmed"):
            if getattr(self, key) is not None:
                cfg[key] = list(getattr(self, key))
        return cfg

    @classmethod
    def from_config(cls, trust: Trust, cfg) -> "ClientSession":
        c_private, s_private = as_bytes(cfg["c_private"], KEY_BYTES), as_bytes(cfg["s_private"], KEY_BYTES)
        params = RoundParams.unpack(cfg["params"])
        session = cls(trust, params, float(cfg["weight"]), KeyPair(c_private, public_key_of(c_private)),
                      KeyPair(s_private, public_key_of(s_private)), as_bytes(cfg["b_seed"], KEY_BYTES))
        if "threshold" in cfg:
            adverts = adverts_from_config(cfg)
            received_from, received = as_ints(cfg["received_from"]), as_bytes_list(cfg["received"])
            if len(received) != len(received_from):
                raise SecAggError("malformed SecAgg node state")
            session.setup = Setup.derive(params, [a.name for a in adverts], int(cfg["threshold"]))
            session.adverts, session.received = sorted(adverts, key=lambda a: a.name), dict(zip(received_from, received))
        session.masked_with = as_ints(cfg["masked_with"]) if "masked_with" in cfg else None
        session.confirmed = as_ints(cfg["confirmed"]) if "confirmed" in cfg else None
        return session


def recover_checked(shares: dict[int, bytes], threshold: int, ok: Callable[[bytes], bool], what: str) -> bytes:
    """Recover a secret and check it (``ok``); if it fails, find which revealed shares are bad.

    With more than t shares a t-subset that passes identifies the polynomial; a share that changes
    the result when swapped into that subset is bad.  No passing subset: the dealer itself dealt
    bad shares, or too many revealers lied - raised as BadShares with what can be attributed."""
    secret = recover_secret(shares, threshold)
    if ok(secret):
        return secret
    ids = sorted(shares)
    for n, subset in enumerate(itertools.combinations(ids, threshold)):
        if n >= _MAX_SUBSETS:
            break
        good = recover_secret({i: shares[i] for i in subset}, threshold)
        if ok(good):
            bad = {x for x in ids if x not in subset
                   and recover_secret({**{i: shares[i] for i in subset[1:]}, x: shares[x]}, threshold) != good}
            raise BadShares(f"{what}: the shares revealed by node(s) {sorted(bad)} do not match its commitment", bad)
    raise BadShares(f"{what}: no {threshold} of the revealed shares match its commitment (it dealt bad shares, "
                    "or more revealers lied than can be told apart)", set())


def unmask_sum(
    setup: Setup,
    adverts: dict[int, Advert],
    shared: dict[int, set[int]],
    masked: dict[int, np.ndarray],
    reveals: dict[int, dict[int, tuple[str, bytes]]],
) -> np.ndarray:
    """Coordinator side: the uint32 sum of the survivors' encoded inputs.

    ``shared[i]`` are the neighbours whose ciphertexts were forwarded to i (i masked with them);
    ``masked`` holds the survivors' y; ``reveals[j][i]`` is what survivor j revealed about i.
    Raises SecAggError (nothing is released) if a needed secret has fewer than t shares, BadShares
    if a recovered secret fails its check."""
    survivors = set(masked)
    if len(survivors) < setup.quorum:
        raise SecAggError(f"only {len(survivors)} masked vector(s) arrived; the nodes reveal shares only for a "
                          f"survivor set of at least {setup.quorum}")
    by_target: dict[int, dict[int, bytes]] = {}
    for j, items in reveals.items():
        for i, (kind, share) in items.items():
            if kind != ("b" if i in survivors else "s"):
                raise BadShares(f"node {j} revealed the wrong secret of node {i}", {j})
            by_target.setdefault(i, {})[j] = share
    dropped = {j for i in survivors for j in shared[i] if j not in survivors}
    for i in sorted(survivors | dropped):  # all-or-nothing: check every needed secret before recovering any
        if len(by_target.get(i, {})) < setup.threshold:
            raise SecAggError(f"too many dropouts: node {i}'s masks can only be removed with {setup.threshold} "
                              f"shares (the threshold) but {len(by_target.get(i, {}))} arrived")
    total = np.zeros(setup.length, dtype=np.uint32)
    for y in masked.values():
        total = total + y
    for i in sorted(survivors):
        name = setup.names[i - 1]
        b = recover_checked(by_target[i], setup.threshold,
                            lambda s, a=adverts[i]: b_commitment(setup.params, a.name, s) == a.b_commit,
                            f"the self-mask seed of '{name}'")
        total = total - prg_mask(b, setup.length)
    for j in sorted(dropped):
        s_private = recover_checked(by_target[j], setup.threshold,
                                    lambda s, a=adverts[j]: public_key_of(s) == a.s_public,
                                    f"the mask key of '{setup.names[j - 1]}'")
        for i in survivors:
            if j in shared[i]:
                pm = _pair_mask(setup, s_private, adverts[i].s_public)
                total = total - pm if setup.sign_id(i, j) > 0 else total + pm  # i added sign(i, j) * pm
    return total
