"""Run Flower's SuperNode with a shorter wait between its asks for work.

Why this exists: flwr 1.42's SuperNode loop (``supernode/start_client_internal.py``) sleeps a fixed
3 s whenever it asks the SuperLink for a message and none is there, polls every 0.5 s for the
ClientApp's reply, and retries content not uploaded yet after 1, 2, 4 s; none is a setting.  A deployed round has 6 messages per node (train, 4 SecAgg+
stages, evaluate), and each next message is sent about a second after the node's reply, just after
the node went to sleep, so Flower's pace alone cost ≈ 18 s per round (``benchmarks/deploy_overhead.py``).

This launcher runs Flower's own ``flower-supernode`` entry point unchanged except for the pace of
the waits in that one module:

- an empty ask backs off from ``--poll`` seconds (default 0.2) by ×1.25 per empty ask up to Flower's
  3 s, and starts again at ``--poll`` once a message arrives: fast between the stages of a round, no
  more load than Flower's own on the SuperLink while a node idles;
- the waits for the ClientApp's reply and for its content (``_push_messages``) poll the node's in-memory
  state every 0.05 s instead of 0.5 s;
- a message whose content the SuperLink does not hold yet is asked for again after 0.05 s, doubling up to
  1 s, instead of after 1, 2, 4 s (Flower's ``pull_objects`` defaults, which the node's prompt asks kept
  running into: 3–5 s per train and evaluate message), for as long as Flower's own limit (2 h), not a
  number of tries.

It touches nothing else (transport, authentication, FAB handling are Flower's).  If the installed
Flower's loop does not hold the waits it was written for, it says so and runs Flower unpaced rather
than guess.  ``--poll 3`` gives Flower's own pace.

Imports: flwr and the standard library only, like ``app_guard.py``: it runs as ``python -I`` before any
app code, and is run as a file (``clients/start-supernode.sh``).

Usage::

    python -I fedtune/node/supernode_pace.py --poll 0.2 -- <flower-supernode arguments>
"""

from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

FLOWER_IDLE_WAIT = 3.0  # flwr 1.42: `time.sleep(3)` after an empty ask (start_client_internal)
FLOWER_REPLY_WAIT = 0.5  # flwr 1.42: `time.sleep(0.5)` while waiting for the ClientApp's reply
REPLY_WAIT = 0.05
BACKOFF = 1.25
# flwr 1.42 retries a message object the SuperLink does not hold yet after 1, 2, 4 ... s (PULL_INITIAL_BACKOFF);
# a node asking promptly often sees a message before the coordinator finished uploading its content
PULL_FIRST_RETRY, PULL_RETRY_CAP = 0.05, 1.0

log = logging.getLogger("fedtune.supernode_pace")


class Pacer:
    """Stands in for the ``time`` module inside Flower's SuperNode loop: same functions, but the two
    fixed waits of that loop are paced as the module docstring says; every other call is ``time``'s."""

    def __init__(self, poll: float, sleep: Callable[[float], None] = time.sleep):
        self.poll = poll
        self._sleep = sleep
        self._idle_wait = poll

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def message_arrived(self) -> None:
        self._idle_wait = self.poll

    def sleep(self, seconds: float) -> None:
        if seconds == FLOWER_IDLE_WAIT:
            wait, self._idle_wait = self._idle_wait, min(FLOWER_IDLE_WAIT, self._idle_wait * BACKOFF)
            self._sleep(wait)
        elif seconds == FLOWER_REPLY_WAIT:
            self._sleep(min(REPLY_WAIT, seconds))
        else:
            self._sleep(seconds)


def loop_holds_the_known_waits(module) -> bool:
    """Whether Flower's SuperNode loop still has exactly the waits this pacer was written for."""
    if not all(hasattr(module, name) for name in ("start_client_internal", "_push_messages",
                                                   "_pull_and_store_message", "pull_objects")):
        return False
    try:
        loop, push = inspect.getsource(module.start_client_internal), inspect.getsource(module._push_messages)
        pulls = inspect.signature(module.pull_objects).parameters
    except (OSError, TypeError, ValueError):
        return False
    return (loop.count("time.sleep(") == 1 and "time.sleep(3)" in loop and "time.sleep(0.5)" in push
            and {"initial_backoff", "backoff_cap", "max_tries_per_object"} <= set(pulls))


def pace(module, poll: float) -> Pacer | None:
    """Pace ``module`` (flwr's ``start_client_internal``) in place; None (and a warning) if it is not
    the loop this was written for."""
    if not loop_holds_the_known_waits(module):
        log.warning("this Flower's SuperNode loop is not the one fedtune paces (flwr 1.42): running it "
                    "at Flower's own pace")
        return None
    pacer = Pacer(poll)
    pull = module._pull_and_store_message

    def pull_and_note(*args, **kwargs):
        run_id = pull(*args, **kwargs)
        if run_id is not None:
            pacer.message_arrived()
        return run_id

    module.time = pacer
    module._pull_and_store_message = pull_and_note
    module.pull_objects = functools.partial(  # no try limit: Flower's time limit (2 h) still bounds the wait
        module.pull_objects, initial_backoff=PULL_FIRST_RETRY, backoff_cap=PULL_RETRY_CAP, max_tries_per_object=None)
    log.info("SuperNode paced: re-asks for work %.2g s after an empty ask, backing off to %g s; "
             "waits for its ClientApp's reply in %g s steps; re-asks for content not uploaded yet from %g s",
             poll, FLOWER_IDLE_WAIT, REPLY_WAIT, PULL_FIRST_RETRY)
    return pacer


def _poll_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.01 <= value <= FLOWER_IDLE_WAIT:
        raise argparse.ArgumentTypeError(f"--poll {text}: give seconds between 0.01 and {FLOWER_IDLE_WAIT:g}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--poll", type=_poll_seconds, default=0.2,
                        help="seconds before the first re-ask after an empty one (backs off to 3 s); "
                             "3 = Flower's own pace")
    parser.add_argument("supernode_args", nargs=argparse.REMAINDER,
                        help="-- then the flower-supernode arguments")
    args = parser.parse_args(argv)
    rest = args.supernode_args[1:] if args.supernode_args[:1] == ["--"] else args.supernode_args
    handler = logging.StreamHandler()  # this logger only: the root's level stays Flower's business
    handler.setFormatter(logging.Formatter("%(asctime)s supernode_pace[%(process)d] %(levelname)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    from flwr.supernode.cli import flower_supernode  # pylint: disable=import-outside-toplevel

    if args.poll < FLOWER_IDLE_WAIT:
        pace(importlib.import_module("flwr.supernode.start_client_internal"), args.poll)
    sys.argv = ["flower-supernode", *rest]
    flower_supernode()


if __name__ == "__main__":
    main()
