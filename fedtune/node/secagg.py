"""The node's side of SecAgg+, one function per stage, secrets kept in Flower's ``context.state``.

``start`` runs inside the train message: it checks and clips the node's LoRA delta, keeps it in
the node's state and returns only two public keys and the node's weight.  ``share``, ``mask``
and ``unmask`` answer the coordinator's later stage messages.  After ``unmask`` — or after any
error — the round's secrets are erased, so a second unmask request cannot extract both secrets
of a neighbour.  Replies carry public keys, AES-GCM ciphertexts, one masked uint32 vector and
Shamir shares; nothing here parses peer input with a code-executing format.
"""

from __future__ import annotations

import os
from typing import Callable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedtune.common.adapters import adapter_hash, check_arrays, flatten
from fedtune.common.secagg.crypto import KEY_BYTES, KeyPair, SecAggError, public_key_of
from fedtune.common.secagg.params import clip_l2
from fedtune.common.secagg.protocol import ClientSession, Setup, as_bytes, as_bytes_list, as_ints

_KEYS, _INPUT, _SETUP, _SESSION = "secagg.keys", "secagg.input", "secagg.setup", "secagg.session"
_ALL = (_KEYS, _INPUT, _SETUP, _SESSION)


def forget(state: RecordDict) -> None:
    """Erase this round's secrets from the node's state."""
    for key in _ALL:
        if key in state:
            del state[key]


def _stage(fn: Callable) -> Callable:
    """Any failure ends this node's part in the round and erases its secrets."""
    def run(state: RecordDict, request: ConfigRecord):
        try:
            return fn(state, request)
        except BaseException:
            forget(state)
            raise
    run.__doc__ = fn.__doc__
    return run


def _expect(state: RecordDict, key: str, request: ConfigRecord) -> ConfigRecord:
    if key not in state:
        raise SecAggError(f"no SecAgg+ state for this stage ({key} missing): the node restarted or stages came out of order")
    record = state[key]
    if int(record["round"]) != int(request["round"]):
        raise SecAggError(f"stage message for round {request['round']} but this node is in round {record['round']}")
    return record


def start(state: RecordDict, rnd: int, global_arrays: Mapping[str, np.ndarray],
          update: Mapping[str, np.ndarray], weight: float, clip: float) -> tuple[ConfigRecord, bool]:
    """Validate and clip the delta, keep it, and return this round's public advertisement.

    Returns (advert, clipped). Raises AdapterMismatch for a wrongly named/shaped or non-finite
    delta: nothing malformed is ever masked.
    """
    forget(state)
    check_arrays(global_arrays, update)
    vector, norm = clip_l2(flatten(update), clip)
    c_key, s_key = KeyPair.generate(), KeyPair.generate()
    state[_KEYS] = ConfigRecord({
        "round": rnd, "model_hash": adapter_hash(global_arrays), "c_private": c_key.private,
        "s_private": s_key.private, "b_seed": os.urandom(KEY_BYTES), "weight": float(weight), "clip": float(clip),
    })
    state[_INPUT] = ArrayRecord({"delta": Array(vector.astype(np.float32))})
    advert = ConfigRecord({"c_public": c_key.public, "s_public": s_key.public, "weight": float(weight)})
    return advert, norm > clip


@_stage
def share(state: RecordDict, request: ConfigRecord) -> ConfigRecord:
    """Stage 2: Shamir-share b and the mask key among the neighbours, each share AES-GCM encrypted."""
    keys = _expect(state, _KEYS, request)
    setup = Setup.from_config(request)
    index = int(request["index"])
    if index not in setup.neighbours:
        raise SecAggError(f"index {index} is not in the round's neighbour graph")
    if setup.clip != float(keys["clip"]):
        raise SecAggError(f"server's clip bound {setup.clip} differs from the {keys['clip']} this node clipped to")
    if float(keys["weight"]) > setup.max_weight:
        raise SecAggError(f"this node's weight {keys['weight']} exceeds the round's bound {setup.max_weight}")
    peers = as_ints(request["peers"])
    peer_c, peer_s = as_bytes_list(request["peer_c"], KEY_BYTES), as_bytes_list(request["peer_s"], KEY_BYTES)
    if len(peer_c) != len(peers) or len(peer_s) != len(peers):
        raise SecAggError("malformed peer key lists")
    c_private, s_private = as_bytes(keys["c_private"], KEY_BYTES), as_bytes(keys["s_private"], KEY_BYTES)
    session = ClientSession(setup, index, as_bytes(keys["model_hash"]), KeyPair(c_private, public_key_of(c_private)),
                            KeyPair(s_private, public_key_of(s_private)), as_bytes(keys["b_seed"], KEY_BYTES))
    out = session.share_keys({j: (c, s) for j, c, s in zip(peers, peer_c, peer_s)})
    state[_SETUP] = ConfigRecord({**setup.to_config(), "round": int(request["round"])})
    state[_SESSION] = ConfigRecord({**session.to_config(), "round": int(request["round"]),
                                    "weight": float(keys["weight"])})
    del state[_KEYS]
    return ConfigRecord({"to": sorted(out), "ciphertexts": [out[j] for j in sorted(out)]})


def _session(state: RecordDict, request: ConfigRecord) -> tuple[Setup, ClientSession, ConfigRecord]:
    record = _expect(state, _SESSION, request)
    setup = Setup.from_config(_expect(state, _SETUP, request))
    return setup, ClientSession.from_config(setup, record), record


@_stage
def mask(state: RecordDict, request: ConfigRecord) -> ArrayRecord:
    """Stage 3: encode (weight × clipped delta, weight) in fixed point and add the masks."""
    setup, session, record = _session(state, request)
    if _INPUT not in state:
        raise SecAggError("this node's delta is no longer in its state")
    vector = state[_INPUT]["delta"].numpy().astype(np.float64)
    weight = float(record["weight"])
    encoded = setup.encoding.encode(np.append(weight * vector, weight * setup.clip))  # raises, never wraps
    masked = session.mask(dict(zip(as_ints(request["from"]), as_bytes_list(request["ciphertexts"]))), encoded)
    state[_SESSION] = ConfigRecord({**session.to_config(), "round": int(request["round"]), "weight": weight})
    del state[_INPUT]  # the plaintext delta is not needed any more
    return ArrayRecord({"masked": Array(masked)})


@_stage
def unmask(state: RecordDict, request: ConfigRecord) -> ConfigRecord:
    """Stage 4: reveal b-shares of survivors and mask-key shares of dropped nodes, never both."""
    _, session, _ = _session(state, request)
    reveals = session.unmask(set(as_ints(request["survivors"])), set(as_ints(request["dropped"])))
    forget(state)
    about = sorted(reveals)
    return ConfigRecord({"about": about, "kinds": [reveals[j][0] for j in about],
                         "shares": [reveals[j][1] for j in about]})
