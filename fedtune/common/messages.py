"""The vocabulary both sides speak over Flower's Message API.

Named numpy arrays <-> ``ArrayRecord``; the status a node's reply carries; error replies the
coordinator can read.  Driving the Grid (send, collect, wait) is the coordinator's job
(``coordinator/grid.py``).
"""

from __future__ import annotations

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


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord(OrderedDict((n, Array(np.ascontiguousarray(a))) for n, a in arrays.items()))


def from_record(record: ArrayRecord) -> "OrderedDict[str, np.ndarray]":
    return OrderedDict((n, a.numpy()) for n, a in record.items())


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
