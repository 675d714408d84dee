"""The coordinator's side of SecAgg+: drives share → mask → confirm → unmask over Flower's Grid.

Input: the signed adverts (two X25519 keys, a capped weight, a seed commitment, the round
parameters) that sampled nodes returned with their train replies.  Output: the sum of the
survivors' weighted, clipped deltas and the sum of their weights — never one node's update.  The
nodes check everything that protects them themselves (``fedtune.common.secagg.protocol``); this
side checks what protects the *federation* from a malicious node: adverts under other parameters
or above the weight cap, recovered secrets against their commitments (a bad share is attributed),
and the decoded sum against the announced weights and Σw·C.  Any failure raises ``SecAggError``
and the caller leaves the global adapter as it was.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from logging import INFO, WARNING

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.logger import log

from fedtune.common.messages import error_text
from fedtune.common.secagg.crypto import SIGNATURE_BYTES, SecAggError
from fedtune.common.secagg.params import degree, threshold
from fedtune.common.secagg.protocol import BadShares, unmask_sum
from fedtune.common.secagg.round import (
    Advert, RoundParams, Setup, adverts_to_config, as_bytes, as_bytes_list, as_ints,
)
from fedtune.coordinator.grid import exchange, reply_bytes

SHARE, MASK, CONFIRM, UNMASK = ("train.secagg_share", "train.secagg_mask", "train.secagg_confirm",
                                "train.secagg_unmask")


@dataclass
class SecureSum:
    weighted_sum: np.ndarray  # float64: sum over survivors of weight_i * clipped delta_i
    total_weight: float
    survivors: list[int]  # node ids
    dropped: list[int]  # node ids that advertised keys but whose update is not in the sum
    degree: int
    threshold: int
    seconds: float = 0.0
    stages: dict = field(default_factory=dict)


class SecAggServer:
    """One round of SecAgg+ for the coordinator; ``nodes`` is the round's per-node metrics dict.

    ``params`` are the round parameters this coordinator announced (its round id, the hash of the
    adapter it sent, the vector length, clip bound and weight cap): an advert made under any other
    is rejected here, before the nodes would refuse the whole round for it."""

    def __init__(self, grid, rnd: int, params: RoundParams, dropout: float, timeout: float, nodes: dict):
        self.grid, self.rnd, self.params = grid, rnd, params
        self.dropout, self.timeout, self.nodes = dropout, timeout, nodes

    def _stage(self, message_type: str, requests: dict[int, ConfigRecord]) -> dict[int, Message]:
        """Send each node its request; return the good replies by node id, note failures."""
        msgs = [Message(RecordDict({"secagg": req}), dst_node_id=nid, message_type=message_type,
                        group_id=str(self.rnd)) for nid, req in requests.items()]
        got: dict[int, Message] = {}
        for reply in exchange(self.grid, msgs, self.timeout):
            nid = reply.metadata.src_node_id
            entry = self.nodes.setdefault(str(nid), {})
            if reply.has_error():
                entry.update(status="error", error=f"{message_type}: {error_text(reply)}")
                log(WARNING, "[round %d] %s failed %s: %s", self.rnd, entry.get("name", nid), message_type,
                    entry["error"])
                continue
            entry["bytes_sent"] = entry.get("bytes_sent", 0) + reply_bytes(reply)
            got[nid] = reply
        for nid in requests:
            if nid not in got and "error" not in self.nodes.get(str(nid), {}):
                self.nodes.setdefault(str(nid), {}).update(status="dropped", error=f"{message_type}: no reply in time")
        return got

    def _reject(self, nid: int, why: str) -> None:
        entry = self.nodes.setdefault(str(nid), {})
        entry.update(status="rejected", error=why)
        log(WARNING, "[round %d] %s: %s", self.rnd, entry.get("name", nid), why)

    def _collect(self, message_type: str, requests: dict[int, ConfigRecord], what: str, parse) -> dict[int, object]:
        """One stage: malformed replies count as a dropout of that node, with the reason recorded."""
        out = {}
        for nid, reply in self._stage(message_type, requests).items():
            try:
                out[nid] = parse(nid, reply)
            except (SecAggError, KeyError, TypeError, ValueError) as exc:
                self._reject(nid, f"{what}: malformed reply: {exc}")
        return out

    def admit(self, adverts: dict[int, Advert]) -> dict[int, Advert]:
        """Adverts made under this round's parameters, one per name, weights within the cap."""
        kept, names = {}, set()
        for nid, advert in sorted(adverts.items()):
            if diff := advert.params.differences(self.params):
                self._reject(nid, f"train: advert made under a different {', '.join(diff)}")
            elif not 0 < advert.weight <= self.params.max_weight:
                self._reject(nid, f"train: weight {advert.weight:g} above the announced cap {self.params.max_weight:g}")
            elif advert.name in names:
                self._reject(nid, f"train: a second advert for the name '{advert.name}'")
            else:
                kept[nid], names = advert, names | {advert.name}
        return kept

    def run(self, adverts: dict[int, Advert]) -> SecureSum:
        t0, stages = time.monotonic(), {}
        adverts = self.admit(adverts)
        if len(adverts) < 2:
            raise SecAggError(f"{len(adverts)} node(s) advertised usable keys; secure aggregation needs at least 2")
        k = degree(len(adverts))
        setup = Setup.derive(self.params, [a.name for a in adverts.values()], threshold(k, self.dropout))
        index = {nid: setup.index_of(a.name) for nid, a in adverts.items()}
        node_of = {i: nid for nid, i in index.items()}
        log(INFO, "[round %d] secure aggregation: %d nodes, %d neighbours each, threshold %d", self.rnd, len(index),
            k, setup.threshold)

        t = time.monotonic()  # stage 1: every node checks every signed advert and the setup, then shares keys
        share = ConfigRecord({"round": self.rnd, **adverts_to_config(sorted(adverts.values(), key=lambda a: a.name)),
                              **setup.graph_to_config()})

        def parse_shares(nid, reply):
            rec = reply.content["secagg"]
            to, cts = as_ints(rec["to"]), as_bytes_list(rec["ciphertexts"])
            if len(to) != len(cts) or not set(to) <= set(setup.neighbours[index[nid]]):
                raise SecAggError("shares addressed to nodes that are not its neighbours")
            return dict(zip(to, cts))
        outbox = {index[nid]: v for nid, v in self._collect(SHARE, {nid: share for nid in index}, "share",
                                                            parse_shares).items()}
        stages["share_seconds"] = time.monotonic() - t

        t = time.monotonic()  # stage 2: forward ciphertexts, collect masked vectors
        inbox: dict[int, dict[int, bytes]] = {i: {} for i in outbox}
        for src, cts in outbox.items():
            for dst, ct in cts.items():
                if dst in inbox:
                    inbox[dst][src] = ct
        requests = {node_of[i]: ConfigRecord({"round": self.rnd, "from": sorted(cts),
                                              "ciphertexts": [cts[j] for j in sorted(cts)]})
                    for i, cts in inbox.items() if len(cts) >= setup.threshold}

        def parse_masked(nid, reply):
            arr = reply.content["masked"]["masked"].numpy()
            if arr.dtype != np.uint32 or arr.shape != (setup.length,):
                raise SecAggError(f"masked vector is {arr.dtype} {arr.shape}, expected uint32 ({setup.length},)")
            return arr
        masked = {index[nid]: v for nid, v in self._collect(MASK, requests, "mask", parse_masked).items()}
        stages["mask_seconds"] = time.monotonic() - t

        t = time.monotonic()  # stage 3: every survivor signs the survivor set (consistency round); a node
        # decides itself whether that set is large enough - asked even when it is not, so it erases its secrets
        survivors = sorted(masked)
        confirm = ConfigRecord({"round": self.rnd, "survivors": survivors})
        signatures = {index[nid]: v for nid, v in self._collect(
            CONFIRM, {node_of[i]: confirm for i in survivors}, "confirm",
            lambda nid, reply: as_bytes(reply.content["secagg"]["signature"], SIGNATURE_BYTES)).items()}
        stages["confirm_seconds"] = time.monotonic() - t
        if len(masked) < setup.quorum:  # the nodes refused to confirm it (and erased their secrets)
            for i in survivors:  # their refusal is the protocol working, not a failure of theirs
                self.nodes.setdefault(str(node_of[i]), {}).update(status="aborted", error="confirm: survivor set too small")
            raise SecAggError(f"only {len(masked)} masked update(s) arrived; the nodes reveal shares only for a "
                              f"survivor set of at least {setup.quorum}")

        t = time.monotonic()  # stage 4: with the signatures, each signer reveals its shares
        signers = sorted(signatures)
        unmask = ConfigRecord({"round": self.rnd, "signers": signers, "signatures": [signatures[i] for i in signers]})

        def parse_reveals(nid, reply):
            rec = reply.content["secagg"]
            about, kinds, shares = as_ints(rec["about"]), list(rec["kinds"]), as_bytes_list(rec["shares"])
            if not (len(about) == len(kinds) == len(shares)) or not set(kinds) <= {"b", "s"}:
                raise SecAggError("malformed reveal lists")
            return {j: (str(kd), sh) for j, kd, sh in zip(about, kinds, shares)}
        reveals = {index[nid]: v for nid, v in self._collect(
            UNMASK, {node_of[i]: unmask for i in signers}, "unmask", parse_reveals).items()}
        try:
            total = unmask_sum(setup, {i: adverts[nid] for nid, i in index.items()},
                               {i: set(inbox[i]) for i in survivors}, masked, reveals)
        except BadShares as exc:
            for i in exc.culprits:
                self._reject(node_of[i], f"unmask: revealed a bad key share ({exc})")
            raise
        stages["unmask_seconds"] = time.monotonic() - t

        decoded = setup.encoding.decode_sum(total)
        announced = sum(adverts[node_of[i]].weight for i in survivors)
        check_decoded_sum(decoded, announced, len(survivors), setup)
        return SecureSum(
            weighted_sum=decoded[:-1], total_weight=float(decoded[-1] / self.params.clip),
            survivors=sorted(node_of[i] for i in survivors), dropped=sorted(set(index) - {node_of[i] for i in survivors}),
            degree=k, threshold=setup.threshold, seconds=time.monotonic() - t0,
            stages={s: round(v, 3) for s, v in stages.items()},
        )


def check_decoded_sum(decoded: np.ndarray, announced_weight: float, survivors: int, setup: Setup) -> None:
    """What one malicious node could break, checked before anything reaches the strategy: the decoded
    total weight must be the survivors' announced weights, and the sum's norm at most Σw·C (each
    node encodes w·x with |x| <= C).  A garbage masked vector or a bad share fails the first w.h.p.;
    a bounded but poisoned update passes both (see docs/explanations/threat-model.md)."""
    unit, clip = setup.encoding.unit, setup.params.clip
    slack = survivors * unit / 2  # each node's fixed-point rounding, at most half a unit per word
    weight = decoded[-1] / clip
    if abs(weight - announced_weight) > slack / clip + 1e-9 * announced_weight:
        raise SecAggError(f"the decoded total weight {weight:.6g} is not the survivors' announced {announced_weight:.6g}: "
                          "a node sent a malformed masked vector or key share")
    norm, bound = float(np.linalg.norm(decoded[:-1])), announced_weight * clip
    if norm > bound * (1 + 1e-6) + slack * np.sqrt(decoded.size - 1):
        raise SecAggError(f"the secure sum's norm {norm:.6g} exceeds Σ w·C = {bound:.6g}: a node sent a vector "
                          "outside the encoding bounds")
