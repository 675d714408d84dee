"""What a node's replies may carry, decided here: results, a status, and error reasons that name
lines, fields and settings but never the content of a record.

Our own errors are written to be content-free (a bad record is named by its line and field);
anything else - an exception from a library, whose text may quote whatever it was handed - goes
back as its type only, and its full text stays in the node's own log for its operator.
"""

from __future__ import annotations

from logging import ERROR

from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log

from fedtune.common.errors import loaded_classes
from fedtune.common.messages import error_reply


# Exceptions whose messages name only lines, fields, paths and settings (module -> class): ours,
# written that way, and the operating system's (an errno and a path).
CONTENT_FREE = {
    "fedtune.common.adapters": "AdapterMismatch", "fedtune.common.config": "ConfigError",
    "fedtune.common.data.errors": "DataError", "fedtune.node.privacy.ledger": "LedgerError",
    "fedtune.common.files": "LockTimeout", "fedtune.common.model": "ModelError",
    "fedtune.node.policy": "PolicyRefusal", "fedtune.common.secagg.crypto": "SecAggError", "builtins": "OSError",
}


def public_reason(exc: BaseException) -> str:
    if isinstance(exc, loaded_classes(CONTENT_FREE)):
        return f"{type(exc).__name__}: {getattr(exc, 'public', exc)}"
    return f"{type(exc).__name__} (details in the node's own log)"


def error(msg: Message, exc: BaseException) -> Message:
    """The error reply; the whole text goes to this node's log only."""
    log(ERROR, "fedtune node: %s failed: %s: %s", msg.metadata.message_type, type(exc).__name__, exc)
    return error_reply(msg, public_reason(exc))


def result(msg: Message, name: str, status: str, metrics: dict, reason: str = "", accounting: dict | None = None,
           **records) -> Message:
    """``accounting``: the unit and accountant of the ε in ``metrics`` (text, so not a metric)."""
    info = {"name": name, "status": status, **({"reason": reason} if reason else {}), **(accounting or {})}
    content = RecordDict({"metrics": MetricRecord(metrics), "info": ConfigRecord(info), **records})
    return Message(content, reply_to=msg)
