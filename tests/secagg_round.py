"""One SecAgg+ round in memory: real node sessions, an honest coordinator by default.

Tests play a malicious coordinator by overriding one step (``Round`` methods) and a malicious
node by editing what it returns.  Nodes are named node-01..node-NN, so index i is node-{i:02d}.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from fedtune.common.secagg.crypto import SecAggError, signing_public_key
from fedtune.common.secagg.params import degree, threshold
from fedtune.common.secagg.protocol import ClientSession, Trust, unmask_sum
from fedtune.common.secagg.roster import Roster
from fedtune.common.secagg.round import RoundParams, Setup, round_id

L = 2000
MODEL = hashlib.sha256(b"global adapter").digest()
STAGES = ("advertise", "share", "mask", "confirm", "unmask")


def name(i: int) -> str:
    return f"node-{i:02d}"


class Round:
    def __init__(self, n: int = 8, dropout: float = 1 / 3, weight: float = 1.0, **trust):
        self.names = [name(i) for i in range(1, n + 1)]
        self.signing = {nm: os.urandom(32) for nm in self.names}
        self.roster = Roster({nm: signing_public_key(k) for nm, k in self.signing.items()})
        self.params = RoundParams(round_id(9, 1), MODEL, L, 1.0, 1000.0)
        self.dropout = dropout
        self.refused: dict[int, str] = {}  # node id -> the stage and reason it refused
        self.reveals: dict = {}
        self.sessions = {i: ClientSession(self.trust(nm, **trust), self.params, weight)
                         for i, nm in enumerate(self.names, 1)}

    def trust(self, nm: str, **kw) -> Trust:
        return Trust(nm, self.signing[nm], self.roster, **kw)

    def _each(self, stage: str, ids, step, ix=None) -> dict:
        """Run one stage at every node; a node that refuses (SecAggError) is recorded and leaves."""
        out = {}
        for i in ids:
            try:
                out[i if ix is None else ix[i]] = step(i)
            except SecAggError as exc:
                self.refused[i] = f"{stage}: {exc}"
        return out

    # -- the honest coordinator's steps; a test overrides one to attack ------------------------
    def setup_for(self, adverts: list) -> Setup:
        k = degree(len(adverts))
        return Setup.derive(self.params, [a.name for a in adverts], threshold(k, self.dropout))

    def share_request(self, i: int, adverts: list, setup: Setup):
        return adverts, setup.threshold, setup.graph_to_config()

    def confirm_request(self, i: int, survivors: set[int]) -> list[int]:
        return sorted(survivors)

    def unmask_request(self, i: int, signatures: dict[int, bytes]) -> dict[int, bytes]:
        return {j: s for j, s in signatures.items() if j != i}

    def run(self, vectors: dict[int, np.ndarray], drop: dict[int, str] | None = None):
        """-> (uint32 sum, survivors, masked vectors), by node id (i = node-{i:02d}); ``drop[i]``: the stage
        node i vanishes at.  The request hooks see round indices (positions in the sampled set)."""
        drop = drop or {}
        live = lambda stage: [i for i in self.sessions if drop.get(i) != stage  # noqa: E731
                              and all(drop.get(i) != s for s in STAGES[:STAGES.index(stage)])]
        adverts = self._each("advertise", live("advertise"), lambda i: self.sessions[i].advertise())
        setup = self.setup_for(list(adverts.values()))
        ix = {i: setup.index_of(a.name) for i, a in adverts.items()}  # node id -> index in this round
        outbox = self._each("share", [i for i in live("share") if i in adverts], lambda i: self.sessions[i].share_keys(
            *self.share_request(ix[i], list(adverts.values()), setup)), ix)
        inbox: dict[int, dict[int, bytes]] = {j: {} for j in outbox}
        for src, cts in outbox.items():
            for dst, ct in cts.items():
                if dst in inbox:
                    inbox[dst][src] = ct
        masked = self._each("mask", [i for i in live("mask") if ix.get(i) in outbox],
                            lambda i: self.sessions[i].mask(inbox[ix[i]], vectors[i]), ix)
        survivors = set(masked)
        signatures = self._each("confirm", [i for i in live("confirm") if ix.get(i) in masked],
                                lambda i: self.sessions[i].confirm(self.confirm_request(ix[i], survivors)), ix)
        self.reveals = reveals = self._each("unmask", [i for i in live("unmask") if ix.get(i) in signatures],
                                            lambda i: self.sessions[i].unmask(self.unmask_request(ix[i], signatures)), ix)
        total = unmask_sum(setup, {ix[i]: a for i, a in adverts.items()}, {j: set(inbox[j]) for j in survivors},
                           masked, reveals)
        node_of = {j: i for i, j in ix.items()}
        return total, {node_of[j] for j in survivors}, {node_of[j]: y for j, y in masked.items()}


def inputs(n: int = 8, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {i: rng.integers(0, 2**32, size=L, dtype=np.uint64).astype(np.uint32) for i in range(1, n + 1)}


def total_of(vectors: dict[int, np.ndarray], ids) -> np.ndarray:
    total = np.zeros(L, dtype=np.uint32)
    for i in ids:
        total = total + vectors[i]
    return total
