"""The vocabulary both sides speak over Flower's Message API.

Named numpy arrays <-> ``ArrayRecord``; the status a node's reply carries; error replies the
coordinator can read.  Driving the Grid (send, collect, wait) is the coordinator's job
(``coordinator/grid.py``).
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from typing import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, Error, Message

# Error codes our ClientApp uses in error replies (Flower reserves small codes for its own).
NODE_ERROR = 100

# The status in a node's reply (``info.status``): it trained / evaluated, or it declined.
OK = "ok"
BUDGET_EXHAUSTED = "budget-exhausted"  # the node's own privacy budget does not allow this round
REFUSED = "refused"  # the node's policy does not allow what the run asks (e.g. DP off); info.reason says why


# Named arrays of one dtype travel packed: one vector of every value and its layout (names and shapes, as
# UTF-8 JSON bytes), so a message carries 2 Flower objects plus chunks instead of 2 per tensor. Deployed, each
# object is one HTTPS request per hop (coordinator → SuperLink → SuperNode → ClientApp): an adapter of 112
# tensors cost 4-5 s per train or evaluate message before (benchmarks/deploy_overhead.py).
PACKED_LAYOUT, PACKED_VALUES = "packed.layout", "packed.values"


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Named arrays as one ``ArrayRecord`` (packed where they share a dtype); ``from_record`` reverses it."""
    arrays = OrderedDict((n, np.ascontiguousarray(a)) for n, a in arrays.items())
    if len({a.dtype for a in arrays.values()}) != 1:
        return ArrayRecord(OrderedDict((n, Array(a)) for n, a in arrays.items()))
    layout = json.dumps([[n, list(a.shape)] for n, a in arrays.items()], separators=(",", ":")).encode()
    values = np.concatenate([a.ravel() for a in arrays.values()])
    return ArrayRecord(OrderedDict([(PACKED_LAYOUT, Array(np.frombuffer(layout, np.uint8))),
                                    (PACKED_VALUES, Array(values))]))


def from_record(record: ArrayRecord) -> "OrderedDict[str, np.ndarray]":
    """The named arrays of a record ``to_record`` made (packed or not); ValueError if a packed one is malformed."""
    if set(record.keys()) != {PACKED_LAYOUT, PACKED_VALUES}:
        return OrderedDict((n, a.numpy()) for n, a in record.items())
    try:
        layout = json.loads(record[PACKED_LAYOUT].numpy().tobytes())
        names, shapes = [n for n, _ in layout], [tuple(int(d) for d in shape) for _, shape in layout]
    except (ValueError, TypeError) as exc:
        raise ValueError(f"a packed array record with an unreadable layout: {exc}") from exc
    values = record[PACKED_VALUES].numpy()
    sizes = [math.prod(shape) for shape in shapes]  # Python ints: a forged huge shape cannot wrap around
    if (values.ndim != 1 or len(set(names)) != len(names) or not all(isinstance(n, str) for n in names)
            or any(d < 0 for shape in shapes for d in shape) or sum(sizes) != values.size):
        raise ValueError(f"a packed array record whose layout ({len(names)} arrays, {sum(sizes)} values) does not "
                         f"fit its {values.size} values or repeats a name")
    parts = np.split(values, np.cumsum(sizes)[:-1]) if sizes else []
    return OrderedDict((n, part.reshape(shape)) for n, part, shape in zip(names, parts, shapes))


def error_reply(msg: Message, reason: str) -> Message:
    """A readable error instead of a crash: the federation carries on without this node.  What
    ``reason`` may say is the node's decision (``node/replies.py``)."""
    return Message(error=Error(code=NODE_ERROR, reason=reason), reply_to=msg)


def error_text(reply: Message) -> str:
    reason = reply.error.reason or ""
    if reply.error.code == NODE_ERROR:  # ours: the whole reason (e.g. every bad line of a data file)
        return reason
    # Flower wraps exceptions raised inside a ClientApp in a long Ray traceback; keep the last line.
    tail = [line for line in reason.replace("\\n", "\n").splitlines() if line.strip()]
    return tail[-1].strip(" '>") if tail else f"error code {reply.error.code}"
