"""The node's side of SecAgg+, one function per stage, secrets kept in Flower's ``context.state``.

``start`` runs inside the train message: it checks and clips the node's LoRA delta, keeps it in
the node's state and returns only its signed advert (two public keys, its capped weight, a seed
commitment and the round parameters).  ``share``, ``mask``, ``confirm`` and ``unmask`` answer the
coordinator's later stage messages; every check that protects this node runs here, from its own
config (``Trust``: roster, signing key, min-peers, min-threshold).  After ``unmask`` - or after any
error - the round's secrets are erased.  Nothing here parses peer input with a code-executing
format.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedtune.common.adapters import adapter_hash, check_arrays, flatten, trained_part
from fedtune.common.secagg.crypto import SecAggError
from fedtune.common.secagg.params import clip_l2
from fedtune.common.secagg.protocol import ClientSession, Trust
from fedtune.common.secagg.round import RoundParams, adverts_from_config, as_bytes_list, as_ints, round_id

_INPUT, _SESSION = "secagg.input", "secagg.session"


def forget(state: RecordDict) -> None:
    """Erase this round's secrets from the node's state."""
    for key in (_INPUT, _SESSION):
        if key in state:
            del state[key]


def _stage(fn: Callable) -> Callable:
    """Load the session, run the stage, save it; any failure ends this node's part and erases its secrets."""
    def run(state: RecordDict, request: ConfigRecord, trust: Trust):
        try:
            if _SESSION not in state:
                raise SecAggError("no SecAgg+ state for this stage: the node restarted or stages came out of order")
            record = state[_SESSION]
            if int(record["round"]) != int(request["round"]):
                raise SecAggError(f"stage message for round {request['round']} but this node is in round {record['round']}")
            session = ClientSession.from_config(trust, record)
            out = fn(state, request, session)
            if _SESSION in state:
                state[_SESSION] = ConfigRecord({**session.to_config(), "round": int(record["round"])})
            return out
        except BaseException:
            forget(state)
            raise
    run.__doc__, run.__name__ = fn.__doc__, fn.__name__
    return run


def start(state: RecordDict, trust: Trust, run_id: int, rnd: int, global_arrays: Mapping[str, np.ndarray],
          update: Mapping[str, np.ndarray], weight: float, clip: float, max_weight: float,
          freeze_a: bool = False) -> tuple[ConfigRecord, bool]:
    """Validate and clip the delta, keep it, and return this round's signed advert.

    The weight is capped at the run's ``max_weight`` (the fixed-point scale comes from that cap, so
    no node's self-report sets it).  Returns (advert, clipped).  Raises AdapterMismatch for a wrongly
    named/shaped or non-finite delta: nothing malformed is ever masked.
    """
    forget(state)
    check_arrays(trained_part(global_arrays, freeze_a), update)  # exactly what this run trains
    vector, norm = clip_l2(flatten(update), clip)
    params = RoundParams(round_id(run_id, rnd), adapter_hash(global_arrays), vector.size + 1, clip, max_weight)
    session = ClientSession(trust, params, min(float(weight), max_weight))
    advert = session.advertise()
    state[_SESSION] = ConfigRecord({**session.to_config(), "round": rnd})
    state[_INPUT] = ArrayRecord({"delta": Array(vector.astype(np.float32))})
    return ConfigRecord(advert.to_record()), norm > clip


@_stage
def share(state: RecordDict, request: ConfigRecord, session: ClientSession) -> ConfigRecord:
    """Stage 1: check every advert and the setup, then Shamir-share b and the mask key among the neighbours."""
    out = session.share_keys(adverts_from_config(request), int(request["threshold"]), request)
    return ConfigRecord({"to": sorted(out), "ciphertexts": [out[j] for j in sorted(out)]})


@_stage
def mask(state: RecordDict, request: ConfigRecord, session: ClientSession) -> ArrayRecord:
    """Stage 2: encode (weight × clipped delta, weight) in fixed point and add the masks."""
    if _INPUT not in state:
        raise SecAggError("this node's delta is no longer in its state")
    vector = state[_INPUT]["delta"].numpy().astype(np.float64)
    clip, weight = session.params.clip, session.weight
    encoded = session.require_setup().encoding.encode(np.append(weight * vector, weight * clip))  # raises, never wraps
    masked = session.mask(dict(zip(as_ints(request["from"]), as_bytes_list(request["ciphertexts"]))), encoded)
    del state[_INPUT]  # the plaintext delta is not needed any more
    return ArrayRecord({"masked": Array(masked)})


@_stage
def confirm(state: RecordDict, request: ConfigRecord, session: ClientSession) -> ConfigRecord:
    """Stage 3: sign this node's view of the round (setup and survivor set), once."""
    return ConfigRecord({"signature": session.confirm(as_ints(request["survivors"]))})


@_stage
def unmask(state: RecordDict, request: ConfigRecord, session: ClientSession) -> ConfigRecord:
    """Stage 4: with a quorum of matching signatures, reveal b-shares of survivors and mask-key shares
    of neighbours that dropped, never both."""
    signers, signatures = as_ints(request["signers"]), as_bytes_list(request["signatures"])
    if len(signers) != len(signatures):
        raise SecAggError("malformed signature lists")
    reveals = session.unmask(dict(zip(signers, signatures)))
    forget(state)
    about = sorted(reveals)
    return ConfigRecord({"about": about, "kinds": [reveals[j][0] for j in about],
                         "shares": [reveals[j][1] for j in about]})
