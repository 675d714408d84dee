"""What every node of a SecAgg+ round must agree on, and the signed records that make them agree.

* ``RoundParams``: fixed before a node sees any peer - round id (run, round), hash of the global
  adapter it trained from, vector length, clip bound and the coordinator's weight cap (which also
  sets the fixed-point scale).  Every advert carries them, signed, so a node that was sent another
  adapter or other parameters is noticed by everyone before a share exists.
* ``Advert``: a node's two X25519 public keys, its weight (<= the cap) and a commitment to its
  self-mask seed, signed by its long-term Ed25519 key from the pinned roster.
* ``Setup``: the sampled set (names of the signed adverts, sorted: index = position + 1), the
  neighbour graph derived from it and the round id, and the threshold; ``digest`` is what each
  node signs in the consistency round together with the survivor set.
All values travel as Flower ConfigRecord scalars/bytes/lists; parsing is fixed-size slicing only.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, replace

import numpy as np

from fedtune.common.secagg.crypto import KEY_BYTES, SIGNATURE_BYTES, SecAggError, digest, sign, verify
from fedtune.common.secagg.params import Encoding, degree, neighbours

_PARAMS = ">32s32sQdd"  # round id, model hash, length, clip, max weight
ADVERT, CONFIRM = b"advert", b"confirm"
_ADVERT_FIELDS = ("name", "params", "c_public", "s_public", "weight", "b_commit", "signature")


def round_id(run_id: int, rnd: int) -> bytes:
    """Unique per (run, round): binds keys, masks, ciphertexts and signatures to this round."""
    return digest(b"fedtune-round", str(run_id).encode(), rnd.to_bytes(4, "big"))


@dataclass(frozen=True)
class RoundParams:
    round_id: bytes
    model_hash: bytes
    length: int  # uint32 words per masked vector (the delta + 1 word for the weight)
    clip: float  # L2 bound on each node's delta
    max_weight: float  # the coordinator's announced cap on a node's weight

    def pack(self) -> bytes:
        return struct.pack(_PARAMS, self.round_id, self.model_hash, self.length, self.clip, self.max_weight)

    @classmethod
    def unpack(cls, blob) -> "RoundParams":
        blob = as_bytes(blob, struct.calcsize(_PARAMS))
        rid, model, length, clip, max_weight = struct.unpack(_PARAMS, blob)
        if not (length > 0 and math.isfinite(clip) and clip > 0 and math.isfinite(max_weight) and max_weight > 0):
            raise SecAggError("round parameters out of range")
        return cls(rid, model, length, clip, max_weight)

    def differences(self, other: "RoundParams") -> list[str]:
        names = {"round_id": "round", "model_hash": "global adapter", "length": "adapter size", "clip": "clip bound",
                 "max_weight": "weight cap"}
        return [label for key, label in names.items() if getattr(self, key) != getattr(other, key)]


@dataclass(frozen=True)
class Advert:
    name: str
    params: RoundParams
    c_public: bytes  # X25519, for encrypting key shares
    s_public: bytes  # X25519, for pairwise masks
    weight: float
    b_commit: bytes  # commitment to the self-mask seed: a recovered seed is checked against it
    signature: bytes = b""

    def _parts(self) -> tuple[bytes, ...]:
        return (self.name.encode(), self.params.pack(), self.c_public, self.s_public, struct.pack(">d", self.weight),
                self.b_commit)

    def signed(self, signing_key: bytes) -> "Advert":
        return replace(self, signature=sign(signing_key, ADVERT, *self._parts()))

    def check(self, roster, mine: RoundParams) -> None:
        """Raises SecAggError unless the roster's key for this name signed it, under ``mine`` params."""
        if not verify(roster.key_of(self.name), self.signature, ADVERT, *self._parts()):
            raise SecAggError(f"the advert of '{self.name}' is not signed by the key the roster lists for it "
                              "(a substituted key, or a forged advert): refusing the round")
        if diff := self.params.differences(mine):
            raise SecAggError(f"'{self.name}' was given a different {', '.join(diff)} than this node "
                              "(the coordinator sent nodes different models or round parameters): refusing the round")
        if not (0 < self.weight <= mine.max_weight):
            raise SecAggError(f"'{self.name}' claims weight {self.weight:g}, outside (0, the cap {mine.max_weight:g}]")

    def to_record(self) -> dict:
        return {"name": self.name, "params": self.params.pack(), "c_public": self.c_public,
                "s_public": self.s_public, "weight": float(self.weight), "b_commit": self.b_commit,
                "signature": self.signature}

    @classmethod
    def from_record(cls, rec) -> "Advert":
        weight = float(rec["weight"])
        if not (math.isfinite(weight) and weight > 0):
            raise SecAggError(f"weight must be a positive number, got {weight}")
        return cls(str(rec["name"]), RoundParams.unpack(rec["params"]), as_bytes(rec["c_public"], KEY_BYTES),
                   as_bytes(rec["s_public"], KEY_BYTES), weight, as_bytes(rec["b_commit"], 32),
                   as_bytes(rec["signature"], SIGNATURE_BYTES))


def adverts_to_config(adverts: list[Advert]) -> dict:
    """A list of adverts as parallel ConfigRecord lists."""
    records = [a.to_record() for a in adverts]
    return {f"adverts.{key}": [r[key] for r in records] for key in _ADVERT_FIELDS}


def adverts_from_config(cfg) -> list[Advert]:
    columns = {key: cfg[f"adverts.{key}"] for key in _ADVERT_FIELDS}
    if not all(isinstance(v, list) for v in columns.values()) or len({len(v) for v in columns.values()}) != 1:
        raise SecAggError("malformed advert lists")
    return [Advert.from_record({k: v[i] for k, v in columns.items()}) for i in range(len(columns["name"]))]


@dataclass(frozen=True)
class Setup:
    params: RoundParams
    names: tuple[str, ...]  # the sampled nodes, sorted; node index = position + 1
    neighbours: dict[int, list[int]]
    threshold: int

    @classmethod
    def derive(cls, params: RoundParams, names, threshold: int) -> "Setup":
        """The graph is a function of the sampled set and the round id alone: every node derives it."""
        names = tuple(sorted(names))
        if len(set(names)) != len(names):
            raise SecAggError("the sampled set names a node twice")
        order = [int(i) + 1 for i in np.random.default_rng(list(params.round_id)).permutation(len(names))]
        k = degree(len(names))
        if not 1 <= threshold <= k:
            raise SecAggError(f"threshold {threshold} is outside 1..{k} (the number of neighbours)")
        return cls(params, names, neighbours(order, k), threshold)

    @property
    def round_id(self) -> bytes:
        return self.params.round_id

    @property
    def length(self) -> int:
        return self.params.length

    @property
    def encoding(self) -> Encoding:
        return Encoding(self.params.clip, self.params.max_weight, len(self.names))

    @property
    def degree(self) -> int:
        return len(next(iter(self.neighbours.values())))

    @property
    def quorum(self) -> int:
        """Consistency signatures a node needs before it reveals shares: a strict majority of the
        sampled set (two survivor sets cannot both get one from honest nodes) and at least t."""
        return max(self.threshold, len(self.names) // 2 + 1)

    def index_of(self, name: str) -> int:
        return self.names.index(name) + 1

    def digest(self) -> bytes:
        graph = b"".join(struct.pack(">H", j) for i in sorted(self.neighbours) for j in [0, *self.neighbours[i]])
        return digest(b"setup", self.params.pack(), "\n".join(self.names).encode(), graph,
                      self.threshold.to_bytes(2, "big"))

    def graph_to_config(self) -> dict:
        nodes = sorted(self.neighbours)
        return {"threshold": self.threshold, "degrees": [len(self.neighbours[i]) for i in nodes],
                "neighbours": [j for i in nodes for j in self.neighbours[i]]}

    def check_graph(self, cfg) -> None:
        """The coordinator's graph must be the derived one (a one-neighbour graph, say, is refused)."""
        mine = self.graph_to_config()
        if (as_ints(cfg["degrees"]), as_ints(cfg["neighbours"])) != (mine["degrees"], mine["neighbours"]):
            raise SecAggError("the coordinator's neighbour graph is not the one derived from the sampled set and "
                              "round: refusing the round")

    def sign_id(self, i: int, j: int) -> int:
        return 1 if i < j else -1

    def share_ad(self, src: int, dst: int) -> bytes:
        return digest(b"share", self.round_id, src.to_bytes(2, "big"), dst.to_bytes(2, "big"), self.params.model_hash)

    def confirmation(self, survivors: list[int]) -> tuple[bytes, ...]:
        return (self.digest(), b"".join(i.to_bytes(2, "big") for i in sorted(survivors)))


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
