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


MAX_PACKED_ARRAYS = 1 << 16  # a LoRA adapter of an 8 B model on every linear layer has ~450 tensors
MAX_DIM = 1 << 40


def from_record(record: ArrayRecord) -> "OrderedDict[str, np.ndarray]":
    """The named arrays of a record ``to_record`` made (packed or not).  A packed record comes from the other
    side of the federation: anything but a well-formed layout that fits its values is a ValueError."""
    if set(record.keys()) != {PACKED_LAYOUT, PACKED_VALUES}:
        return OrderedDict((n, a.numpy()) for n, a in record.items())
    names, shapes = _layout(record[PACKED_LAYOUT].numpy().tobytes())
    values = record[PACKED_VALUES].numpy()
    sizes = [math.prod(shape) for shape in shapes]  # Python ints: a forged huge shape cannot wrap around
    if values.ndim != 1 or sum(sizes) != values.size:
        raise ValueError(f"a packed array record whose layout ({len(names)} arrays, {sum(sizes)} values) does not "
                         f"fit its {values.size} values")
    parts = np.split(values, np.cumsum(sizes)[:-1]) if sizes else []
    return OrderedDict((n, part.reshape(shape)) for n, part, shape in zip(names, parts, shapes))


def _layout(raw: bytes) -> tuple[list[str], list[tuple[int, ...]]]:
    """Names and shapes of a packed record: a JSON list of [name, [dims...]], distinct string names,
    non-negative integer dims, at most MAX_PACKED_ARRAYS entries; anything else is a ValueError."""
    def refuse(why: str) -> ValueError:
        return ValueError(f"a packed array record with a malformed layout: {why}")

    try:
        layout = json.loads(raw, parse_constant=_not_a_number)
    except (ValueError, RecursionError) as exc:
        raise refuse(str(exc)[:200]) from None
    if not isinstance(layout, list) or len(layout) > MAX_PACKED_ARRAYS:
        raise refuse(f"not a list of at most {MAX_PACKED_ARRAYS} entries")
    names, shapes = [], []
    for entry in layout:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str) and isinstance(entry[1], list)
                and all(type(d) is int and 0 <= d <= MAX_DIM for d in entry[1])):
            raise refuse(f"an entry {str(entry)[:80]} is not [name, [non-negative integer dims]]")
        names.append(entry[0])
        shapes.append(tuple(entry[1]))
    if len(set(names)) != len(names):
        raise refuse("it repeats a name")
    return names, shapes


def _not_a_number(constant: str):
    raise ValueError(f"{constant} is not a number")


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
