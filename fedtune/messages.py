"""Flower Message API plumbing shared by the ServerApp and ClientApp.

Named numpy arrays <-> ``ArrayRecord``; error replies the server can read; and a send/collect
loop that reports each node's reply as it arrives (progress) and stops at a deadline.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from logging import ERROR
from typing import Callable, Iterable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, Error, Message
from flwr.common.logger import log

# Error codes our ClientApp uses in error replies (Flower reserves small codes for its own).
NODE_ERROR = 100


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord(OrderedDict((n, Array(np.ascontiguousarray(a))) for n, a in arrays.items()))


def from_record(record: ArrayRecord) -> "OrderedDict[str, np.ndarray]":
    return OrderedDict((n, a.numpy()) for n, a in record.items())


def reply_bytes(reply: Message) -> int:
    """Payload bytes a node sent in one reply (arrays, configs, metrics), as Flower counts them."""
    return 0 if reply.has_error() else int(sum(record.count_bytes() for record in reply.content.values()))


def error_reply(msg: Message, exc: BaseException) -> Message:
    """Reply with a readable error instead of crashing: the federation carries on without us.
    The same message goes to this node's own log, for its operator."""
    log(ERROR, "fedtune node: %s failed: %s: %s", msg.metadata.message_type, type(exc).__name__, exc)
    return Message(error=Error(code=NODE_ERROR, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)


def error_text(reply: Message) -> str:
    reason = reply.error.reason or ""
    if reply.error.code == NODE_ERROR:  # ours: the whole reason (e.g. every bad line of a data file)
        return reason
    # Flower wraps exceptions raised inside a ClientApp in a long Ray traceback; keep the last line.
    tail = [line for line in reason.replace("\\n", "\n").splitlines() if line.strip()]
    return tail[-1].strip(" '>") if tail else f"error code {reply.error.code}"


def wait_for_nodes(grid, minimum: int, timeout: float, poll: float = 0.2) -> list[int]:
    """Node ids once at least ``minimum`` are connected (simulation registers nodes after start)."""
    deadline = time.monotonic() + timeout
    while True:
        ids = sorted(grid.get_node_ids())
        if len(ids) >= minimum:
            return ids
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(ids)} of the required {minimum} nodes connected within {timeout:.0f}s")
        time.sleep(poll)


def exchange(
    grid, messages: Iterable[Message], timeout: float, on_reply: Callable[[Message], None] | None = None,
    poll: float = 0.2,
) -> list[Message]:
    """Push messages, pull replies until all arrived or ``timeout`` passed; missing replies are dropped."""
    pending = set(grid.push_messages(list(messages)))
    deadline = time.monotonic() + timeout
    replies: list[Message] = []
    while pending and time.monotonic() < deadline:
        for reply in grid.pull_messages(pending):
            pending.discard(reply.metadata.reply_to_message_id)
            replies.append(reply)
            if on_reply:
                on_reply(reply)
        if pending:
            time.sleep(poll)
    return replies
