"""The coordinator's side of SecAgg+: drives share → mask → unmask over Flower's Grid.

Input: the public advertisements (two X25519 keys and a weight) that sampled nodes returned
with their train replies.  Output: the sum of the survivors' weighted, clipped deltas and the
sum of their weights — never one node's update.  Any failure that would need the server to
learn more than that raises ``SecAggError`` and the caller leaves the global adapter as it was.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from logging import INFO, WARNING

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.logger import log

from fedtune.common.messages import error_text
from fedtune.common.secagg.crypto import KEY_BYTES, SecAggError, digest
from fedtune.common.secagg.params import degree, neighbours, threshold
from fedtune.common.secagg.protocol import Setup, as_bytes, as_bytes_list, as_ints, unmask_sum
from fedtune.coordinator.grid import exchange, reply_bytes

SHARE, MASK, UNMASK = "train.secagg_share", "train.secagg_mask", "train.secagg_unmask"


@dataclass(frozen=True)
class Advert:
    c_public: bytes
    s_public: bytes
    weight: float

    @classmethod
    def from_record(cls, record: ConfigRecord) -> "Advert":
        weight = float(record["weight"])
        if not (weight > 0 and np.isfinite(weight)):
            raise SecAggError(f"weight must be a positive number, got {weight}")
        return cls(as_bytes(record["c_public"], KEY_BYTES), as_bytes(record["s_public"], KEY_BYTES), weight)


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


def round_id(run_id: int, rnd: int) -> bytes:
    return digest(b"fedtune-round", str(run_id).encode(), rnd.to_bytes(4, "big"))


class SecAggServer:
    """One round of SecAgg+ for the coordinator; ``nodes`` is the round's per-node metrics dict."""

    def __init__(self, grid, rnd: int, run_id: int, length: int, clip: float, dropout: float, timeout: float,
                 nodes: dict):
        self.grid, self.rnd, self.length, self.clip = grid, rnd, length, clip
        self.dropout, self.timeout, self.nodes = dropout, timeout, nodes
        self.round_id = round_id(run_id, rnd)

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

    def _parse(self, nid: int, what: str, parse):
        """Malformed replies count as a dropout of that node, with the reason recorded."""
        try:
            return parse()
        except (SecAggError, KeyError, TypeError, ValueError) as exc:
            entry = self.nodes.setdefault(str(nid), {})
            entry.update(status="error", error=f"{what}: malformed reply: {exc}")
            log(WARNING, "[round %d] %s: malformed %s reply: %s", self.rnd, entry.get("name", nid), what, exc)
            return None

    def run(self, adverts: dict[int, Advert]) -> SecureSum:
        t0 = time.monotonic()
        ids = sorted(adverts)
        if len(ids) < 2:
            raise SecAggError(f"{len(ids)} node(s) advertised keys; secure aggregation needs at least 2")
        index = {nid: i + 1 for i, nid in enumerate(ids)}
        node_of = {i: nid for nid, i in index.items()}
        order = [int(i) + 1 for i in np.random.default_rng(list(self.round_id)).permutation(len(ids))]
        k = degree(len(ids))
        setup = Setup(self.round_id, neighbours(order, k), threshold(k, self.dropout), self.length + 1, self.clip,
                      max(a.weight for a in adverts.values()))
        keys = {index[nid]: (a.c_public, a.s_public) for nid, a in adverts.items()}
        log(INFO, "[round %d] secure aggregation: %d nodes, %d neighbours each, threshold %d", self.rnd, len(ids),
            k, setup.threshold)
        base = {**setup.to_config(), "round": self.rnd}
        stages = {}

        # stage 2: share keys
        t = time.monotonic()
        requests = {}
        for nid in ids:
            i = index[nid]
            peers = setup.neighbours[i]
            requests[nid] = ConfigRecord({**base, "index": i, "peers": peers, "peer_c": [keys[j][0] for j in peers],
                                          "peer_s": [keys[j][1] for j in peers]})
        outbox: dict[int, dict[int, bytes]] = {}
        for nid, reply in self._stage(SHARE, requests).items():
            i = index[nid]

            def parse(reply=reply, i=i):
                rec = reply.content["secagg"]
                to, cts = as_ints(rec["to"]), as_bytes_list(rec["ciphertexts"])
                if len(to) != len(cts) or not set(to) <= set(setup.neighbours[i]):
                    raise SecAggError("shares addressed to nodes that are not its neighbours")
                return dict(zip(to, cts))
            if (got := self._parse(nid, "share", parse)) is not None:
                outbox[i] = got
        stages["share_seconds"] = time.monotonic() - t

        # stage 3: forward ciphertexts, collect masked vectors
        t = time.monotonic()
        inbox: dict[int, dict[int, bytes]] = {i: {} for i in outbox}
        for src, cts in outbox.items():
            for dst, ct in cts.items():
                if dst in inbox:
                    inbox[dst][src] = ct
        requests = {node_of[i]: ConfigRecord({"round": self.rnd, "from": sorted(cts), "ciphertexts": [cts[j] for j in sorted(cts)]})
                    for i, cts in inbox.items() if len(cts) >= setup.threshold}
        masked: dict[int, np.ndarray] = {}
        for nid, reply in self._stage(MASK, requests).items():
            def parse(reply=reply):
                arr = reply.content["masked"]["masked"].numpy()
                if arr.dtype != np.uint32 or arr.shape != (setup.length,):
                    raise SecAggError(f"masked vector is {arr.dtype} {arr.shape}, expected uint32 ({setup.length},)")
                return arr
            if (arr := self._parse(nid, "mask", parse)) is not None:
                masked[index[nid]] = arr
        stages["mask_seconds"] = time.monotonic() - t
        survivors, dropped = set(masked), set(outbox) - set(masked)
        if len(survivors) < 2:
            raise SecAggError(f"only {len(survivors)} masked update(s) arrived; at least 2 are needed")

        # stage 4: unmask
        t = time.monotonic()
        request = {"round": self.rnd, "survivors": sorted(survivors), "dropped": sorted(dropped)}
        reveals: dict[int, dict[int, tuple[str, bytes]]] = {}
        for nid, reply in self._stage(UNMASK, {node_of[i]: ConfigRecord(request) for i in survivors}).items():
            def parse(reply=reply):
                rec = reply.content["secagg"]
                about, kinds, shares = as_ints(rec["about"]), list(rec["kinds"]), as_bytes_list(rec["shares"])
                if not (len(about) == len(kinds) == len(shares)) or not set(kinds) <= {"b", "s"}:
                    raise SecAggError("malformed reveal lists")
                return {j: (str(kd), sh) for j, kd, sh in zip(about, kinds, shares)}
            if (got := self._parse(nid, "unmask", parse)) is not None:
                reveals[index[nid]] = got
        total = unmask_sum(setup, keys, {i: set(inbox[i]) for i in survivors}, masked, reveals)
        stages["unmask_seconds"] = time.monotonic() - t

        decoded = setup.encoding.decode_sum(total)
        announced = sum(adverts[node_of[i]].weight for i in survivors)
        check_decoded_sum(decoded, announced, len(survivors), setup)
        return SecureSum(
            weighted_sum=decoded[:-1], total_weight=float(decoded[-1] / self.clip),
            survivors=sorted(node_of[i] for i in survivors), dropped=sorted(node_of[i] for i in set(index.values()) - survivors),
            degree=k, threshold=setup.threshold, seconds=time.monotonic() - t0,
            stages={s: round(v, 3) for s, v in stages.items()},
        )


def check_decoded_sum(decoded: np.ndarray, announced_weight: float, survivors: int, setup: Setup) -> None:
    """What one malicious node could break, checked before anything reaches the strategy: the decoded
    total weight must be the survivors' announced weights, and the sum's norm at most Σw·C (each
    node encodes w·x with |x| <= C).  A garbage masked vector or a bad share fails the first w.h.p.;
    a bounded but poisoned update passes both (see docs/threat-model.md)."""
    unit = setup.encoding.unit
    slack = survivors * unit / 2  # each node's fixed-point rounding, at most half a unit per word
    weight = decoded[-1] / setup.clip
    if abs(weight - announced_weight) > slack / setup.clip + 1e-9 * announced_weight:
        raise SecAggError(f"the decoded total weight {weight:.6g} is not the survivors' announced {announced_weight:.6g}: "
                          "a node sent a malformed masked vector or key share")
    norm, bound = float(np.linalg.norm(decoded[:-1])), announced_weight * setup.clip
    if norm > bound * (1 + 1e-6) + slack * np.sqrt(decoded.size - 1):
        raise SecAggError(f"the secure sum's norm {norm:.6g} exceeds Σ w·C = {bound:.6g}: a node sent a vector "
                          "outside the encoding bounds")
