"""An in-process Flower Grid: messages go straight to the real ClientApp, one Context per node.

It exercises the real ServerApp coordinator and the real ClientApp handlers without Flower's
scheduler, so tests can make nodes drop out at a chosen stage, tamper with what one node is sent,
and inspect every reply that crosses the "network".
"""

from __future__ import annotations

from pathlib import Path
from uuid import uuid4

from flwr.app import Context, Message, RecordDict

from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from fedtune.common.secagg.roster import build_roster, write_signing_key
from fedtune.node.client_app import app as client_app


def roster_for(folder: Path, names: list[str]) -> dict[str, dict]:
    """Signing keys and one pinned roster for deployed nodes: name -> its node-config entries."""
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        write_signing_key(folder / f"{n}.signing-key", folder / f"{n}.roster-entry", n)
    roster = folder / "roster.toml"
    build_roster([folder / f"{n}.roster-entry" for n in names], roster)
    return {n: {"signing-key": str(folder / f"{n}.signing-key"), "roster": str(roster)} for n in names}


class LoopbackGrid:
    def __init__(self, num_nodes: int, run_config: dict, run_id: int = 7, node_configs: list[dict] | None = None):
        """Simulated nodes (partitions of the run's data), or deployed ones with ``node_configs``."""
        # what Flower sets in a ServerApp process; Message() reads it
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, SUPERLINK_NODE_ID, 1
        self.node_ids = [1000 + 17 * i for i in range(num_nodes)]
        configs = node_configs or [{"partition-id": i, "num-partitions": num_nodes} for i in range(num_nodes)]
        self.contexts = {
            nid: Context(run_id=run_id, node_id=nid, node_config=dict(configs[i]), state=RecordDict(),
                         run_config=dict(run_config))
            for i, nid in enumerate(self.node_ids)
        }
        self.drop_at: dict[int, str] = {}  # node id -> message type from which on it never replies
        self.tamper = None  # callable(message) -> message, applied to outgoing messages
        self.observe = None  # callable(message_type, node_id, reply, context) after each reply
        self.sent: list[tuple[str, int, Message]] = []  # every reply: (message type, node id, reply)
        self._replies: dict[str, Message] = {}
        self._gone: set[int] = set()

    def rewrite_run_config(self, changes: dict) -> None:
        """Play a malicious coordinator: every node is handed this run config from now on."""
        for ctx in self.contexts.values():
            ctx.run_config = {**ctx.run_config, **changes}

    def get_node_ids(self):
        return list(self.node_ids)

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = mid = str(uuid4())
            ids.append(mid)
            nid, mtype = msg.metadata.dst_node_id, msg.metadata.message_type
            if self.drop_at.get(nid) == mtype:
                self._gone.add(nid)
            if nid in self._gone:
                continue
            if self.tamper:
                msg = self.tamper(msg)
            reply = client_app(msg, self.contexts[nid])
            self.sent.append((mtype, nid, reply))
            if self.observe:
                self.observe(mtype, nid, reply, self.contexts[nid])
            self._replies[mid] = reply
        return ids

    def pull_messages(self, message_ids):
        return [self._replies.pop(m) for m in list(message_ids) if m in self._replies]
