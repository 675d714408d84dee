"""Driving Flower's Grid from the coordinator: wait for nodes, send messages and collect the
replies as they arrive (progress) until a deadline, and count what each node sent."""

from __future__ import annotations

import time
from typing import Callable, Iterable

from flwr.app import Message


def reply_bytes(reply: Message) -> int:
    """Payload bytes a node sent in one reply (arrays, configs, metrics), as Flower counts them."""
    return 0 if reply.has_error() else int(sum(record.count_bytes() for record in reply.content.values()))


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
