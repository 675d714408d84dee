"""The node's SuperNode launcher (``fedtune/node/supernode_pace.py``) shortens only the fixed waits of
Flower 1.42's SuperNode loop, and only on the loop it was written for."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
import time
import types

import pytest

from fedtune.node import supernode_pace
from fedtune.node.supernode_pace import FLOWER_IDLE_WAIT, FLOWER_REPLY_WAIT, REPLY_WAIT, Pacer, pace

FLOWER_LOOP = importlib.import_module("flwr.supernode.start_client_internal")


def _recording_pacer(poll=0.2):
    slept: list[float] = []
    return Pacer(poll, sleep=slept.append), slept


def test_empty_asks_back_off_from_the_poll_to_flowers_three_seconds_and_a_message_resets_them():
    pacer, slept = _recording_pacer(0.2)
    for _ in range(20):
        pacer.sleep(FLOWER_IDLE_WAIT)
    assert slept[0] == 0.2 and slept == sorted(slept) and slept[-1] == FLOWER_IDLE_WAIT
    assert max(slept) <= FLOWER_IDLE_WAIT and sum(slept[:8]) < 4  # eight asks within 4 s, not 24
    pacer.message_arrived()
    pacer.sleep(FLOWER_IDLE_WAIT)
    assert slept[-1] == 0.2


def test_the_reply_wait_is_shortened_and_every_other_wait_is_left_alone():
    pacer, slept = _recording_pacer()
    pacer.sleep(FLOWER_REPLY_WAIT)
    pacer.sleep(1.0)
    pacer.sleep(0.01)
    assert slept == [REPLY_WAIT, 1.0, 0.01]
    assert pacer.monotonic() <= pacer.monotonic()  # the rest of `time` is time's own


def _loop_copy(answers):
    """A stand-in for Flower's loop module: Flower's real loop and push functions (what the pacer checks), a
    scripted pull that, like Flower's, downloads a message's content with the module's ``pull_objects``."""
    module = types.ModuleType("loop_copy")
    module.start_client_internal = FLOWER_LOOP.start_client_internal
    module._push_messages = FLOWER_LOOP._push_messages
    module.downloads = []

    def pull_objects(object_ids, pull_object_fn, *, initial_backoff=1.0, backoff_cap=10.0, max_tries_per_object=500):
        module.downloads.append((initial_backoff, backoff_cap, max_tries_per_object))
        return {}

    def pull_and_store(*_a, **_k):
        run_id = next(answers)
        if run_id is not None:
            module.pull_objects(["content"], pull_object_fn=None)
        return run_id

    module.pull_objects, module._pull_and_store_message = pull_objects, pull_and_store
    return module


def test_the_installed_flower_loop_is_the_one_the_pacer_was_written_for():
    """If Flower changes its SuperNode loop this fails, so the pacer is looked at again with the upgrade."""
    assert supernode_pace.loop_holds_the_known_waits(FLOWER_LOOP)
    loop = inspect.getsource(FLOWER_LOOP.start_client_internal)
    assert "run_id = _pull_and_store_message(" in loop and "time.sleep(3)" in loop
    assert "obj_contents = pull_objects(" in inspect.getsource(FLOWER_LOOP._pull_and_store_message)


def test_pacing_swaps_only_the_loops_clock_and_downloads_and_a_pulled_message_resets_the_backoff():
    module = _loop_copy(iter([None, None, 7, None]))
    real_sleep = time.sleep
    pacer = pace(module, 0.2)
    assert module.time is pacer and time.sleep is real_sleep and FLOWER_LOOP.time is time
    slept: list[float] = []
    pacer._sleep = slept.append
    for _ in range(4):
        if module._pull_and_store_message() is None:
            module.time.sleep(3)
    assert slept == [0.2, 0.2 * 1.25, 0.2]  # the third ask got run 7: the fourth empty ask waits 0.2 s again
    assert module.downloads == [(supernode_pace.PULL_FIRST_RETRY, supernode_pace.PULL_RETRY_CAP, None)]
    assert supernode_pace.PULL_FIRST_RETRY < 1.0  # Flower's first retry


def test_a_loop_with_other_waits_is_left_at_flowers_own_pace(caplog):
    module = _loop_copy(iter([]))
    module.start_client_internal = lambda: None  # a loop without Flower's fixed idle wait
    before = dict(vars(module))
    assert pace(module, 0.2) is None
    assert dict(vars(module)) == before and "Flower's own pace" in caplog.text


@pytest.mark.parametrize("poll", ["0", "5", "x"])
def test_a_poll_outside_what_makes_sense_is_refused_with_the_range(poll):
    out = subprocess.run([sys.executable, "-I", supernode_pace.__file__, "--poll", poll, "--", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "give seconds between 0.01 and 3" in out.stderr, out.stderr


def test_the_launcher_hands_its_arguments_to_flowers_supernode():
    out = subprocess.run([sys.executable, "-I", supernode_pace.__file__, "--poll", "0.2", "--", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--superlink" in out.stdout and "--isolation" in out.stdout, out.stderr
