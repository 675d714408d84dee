"""A node runs only the app its operator approved (``fedtune/node/app_guard.py``).

The whole path through a real SuperLink and SuperNodes is in ``tests/test_deployment.py``
(``test_a_modified_app_is_refused_before_any_of_its_code_runs``); here: the hash the operator
approves is the one ``flwr run`` sends, the approved list fails closed, the guard imports nothing
it guards, and the runner process re-checks the very bytes it installs (a fresh ``python -I``
process with Flower's runner replaced by a stand-in that does what it does with the FAB).
"""

from __future__ import annotations

import ast
import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.cli.build import build_fab_from_disk

from fedtune.node import app_guard, supernode_pace

pytestmark = pytest.mark.adversarial

CLIENT = '''import os
open(os.environ["MARKER"], "w").write("ran")  # proof that this module's code executed
from flwr.clientapp import ClientApp
app = ClientApp()
'''


def _toy_app(folder: Path, client_code: str = CLIENT) -> Path:
    (folder / "toy").mkdir(parents=True)
    (folder / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
        '[project]\nname = "toy"\nversion = "1.0.0"\ndependencies = []\n'
        '[tool.hatch.build.targets.wheel]\npackages = ["."]\n'
        '[tool.flwr.app]\npublisher = "test"\n'
        '[tool.flwr.app.components]\nserverapp = "toy.server:app"\nclientapp = "toy.client:app"\n')
    (folder / "toy" / "__init__.py").write_text("")
    (folder / "toy" / "server.py").write_text("from flwr.serverapp import ServerApp\napp = ServerApp()\n")
    (folder / "toy" / "client.py").write_text(client_code)
    return folder


def test_the_approved_hash_is_the_one_flwr_run_sends_and_one_changed_line_changes_it(tmp_path):
    app = _toy_app(tmp_path / "a")
    assert app_guard.app_hash(app) == hashlib.sha256(build_fab_from_disk(app)).hexdigest()
    assert app_guard.app_hash(app) == app_guard.app_hash(app)  # Flower writes fixed zip timestamps
    modified = _toy_app(tmp_path / "b", CLIENT + "x = 1\n")
    assert app_guard.app_hash(modified) != app_guard.app_hash(app)


@pytest.mark.parametrize("line", [
    None, 'approved-apps = ""', 'approved-apps = "not-a-hash"', 'approved-apps = 7', "= broken toml",
    f'approved-apps = "{"a" * 64} {"b" * 63}"',  # one good hash does not save a bad entry
])
def test_the_approved_list_fails_closed(tmp_path, line):
    config = tmp_path / "node-config.toml"
    if line is not None:
        config.write_text(f'name = "n"\n{line}\n')
    assert app_guard.load_approved(config) == frozenset()


def test_approved_apps_are_read_from_the_node_config(tmp_path):
    config = tmp_path / "node-config.toml"
    config.write_text(f'name = "n"\napproved-apps = "{"a" * 64}, {"B" * 64}"\n')
    assert app_guard.load_approved(config) == {"a" * 64, "b" * 64}


@pytest.mark.parametrize("script", [app_guard, supernode_pace], ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_the_guard_and_the_supernode_launcher_import_only_flwr_and_the_standard_library(script):
    """The runner must load the app's modules from the verified FAB: importing fedtune here would
    put the node's installed copy in sys.modules first (both run as ``python -I`` files beside it)."""
    tree = ast.parse(Path(script.__file__).read_text())
    roots = {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    roots |= {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert roots - {"__future__"} <= set(sys.stdlib_module_names) | {"flwr"}, roots


RUNNER = '''import hashlib, sys
from pathlib import Path
fab = Path(sys.argv[1]).read_bytes()
sys.argv = ["app_guard.py", "_clientapp", *sys.argv[2:]]
from flwr.supernode.runtime import run_clientapp as rc

def stand_in(**_):  # what Flower's run_clientapp does with the FAB it pulled (install, then load)
    rc.install_from_fab(fab, skip_prompt=True)
    rc.get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)(
        "test/toy", "1.0.0", hashlib.sha256(fab).hexdigest())
    print("LOADED")

rc.run_clientapp = stand_in
sys.path.insert(0, sys.argv.pop())
import app_guard
try:
    app_guard.main()
except app_guard.AppNotApproved as exc:
    print("REFUSED", exc)
'''


def _runner(tmp_path: Path, fab: bytes, approved: str, expected: str) -> tuple[str, bool]:
    (tmp_path / "app.fab").write_bytes(fab)
    (tmp_path / "node-config.toml").write_text(f'approved-apps = "{approved}"\n')
    (tmp_path / "token").write_text("0" * 64)
    marker = tmp_path / "marker"
    res = subprocess.run(
        [sys.executable, "-I", "-c", RUNNER, str(tmp_path / "app.fab"), "--runtime-api-address", "127.0.0.1:1",
         "--token-file", str(tmp_path / "token"), "--node-config", str(tmp_path / "node-config.toml"),
         "--expected-hash", expected, str(Path(app_guard.__file__).parent)],
        env={**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home"), "MARKER": str(marker)},
        capture_output=True, text=True, timeout=300)
    out = [line for line in res.stdout.splitlines() if line.startswith(("LOADED", "REFUSED"))]
    assert out, res.stderr[-2000:]
    return out[-1], marker.exists()


def test_the_runner_installs_and_loads_an_approved_app_from_the_verified_fab(tmp_path):
    fab = build_fab_from_disk(_toy_app(tmp_path / "app"))
    digest = hashlib.sha256(fab).hexdigest()
    assert _runner(tmp_path, fab, digest, digest) == ("LOADED", True)


def test_the_runner_refuses_bytes_other_than_the_approved_ones_before_any_code_runs(tmp_path):
    approved = build_fab_from_disk(_toy_app(tmp_path / "approved"))
    swapped = build_fab_from_disk(_toy_app(tmp_path / "swapped", CLIENT + "x = 1\n"))
    good = hashlib.sha256(approved).hexdigest()
    # the task was approved under the good hash, but the FAB the runner pulls is another one
    verdict, ran = _runner(tmp_path, swapped, good, good)
    assert verdict.startswith("REFUSED") and "not approved" in verdict and not ran


WARM_CLIENT = '''import os
open(os.environ["MARKER"], "a").write("imported\\n")  # once per process that loads the app
from flwr.app import Message, RecordDict
from flwr.clientapp import ClientApp
app = ClientApp()

@app.train()
def train(msg, context):
    open(os.environ["MARKER"], "a").write(f"trained in {os.getpid()}\\n")
    return Message(RecordDict(), reply_to=msg)
'''

WARM = '''import hashlib, sys
from pathlib import Path
from types import SimpleNamespace
fabs = iter([Path(p).read_bytes() for p in sys.argv[1].split(",")])
sys.argv = ["app_guard.py", "_warm", *sys.argv[2:]]
from flwr.app import Context, Message, RecordDict
from flwr.supercore import heartbeat
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode.runtime import run_clientapp as rc

def pull(client):  # Flower's pull_task_input, with the task's message, context, run and FAB made up here
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = 1
    fab = next(fabs)
    msg = Message(RecordDict(), dst_node_id=1, message_type="train")
    msg.metadata.__dict__["_message_id"] = msg.object_id
    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    return msg, ctx, SimpleNamespace(fab_id="test/toy", fab_version="1.0.0"), SimpleNamespace(
        content=fab, hash_str=hashlib.sha256(fab).hexdigest())

rc.push_message = lambda client, reply, context: print("REPLY", "error" if reply.has_error() else "ok", flush=True)
rc.push_task_output = lambda client, context, sub_status, details: print("STATUS", sub_status, details, flush=True)
heartbeat.HeartbeatSender = lambda fn: SimpleNamespace(start=lambda: None, stop=lambda: None)
heartbeat.make_task_heartbeat_fn_http = lambda client: None
sys.path.insert(0, sys.argv.pop())
import app_guard
app_guard.pull_task_input_promptly = pull
app_guard.runtime_client = lambda *a: SimpleNamespace(close=lambda: None)
app_guard.main()
'''


def test_a_warm_runner_loads_the_approved_app_once_serves_each_task_and_refuses_swapped_bytes(tmp_path):
    """`serve --warm-idle-exit`: one process per approved app runs task after task (its module, and what it
    caches, stay loaded), and every task's FAB bytes are checked again: a swapped app on a later task is refused
    and none of its code runs."""
    approved = build_fab_from_disk(_toy_app(tmp_path / "approved", WARM_CLIENT))
    swapped = build_fab_from_disk(_toy_app(tmp_path / "swapped", WARM_CLIENT + "x = 1\n"))
    good = hashlib.sha256(approved).hexdigest()
    paths = []
    for name, fab in (("a", approved), ("b", approved), ("c", swapped), ("d", approved)):
        paths.append(tmp_path / f"{name}.fab")
        paths[-1].write_bytes(fab)
    (tmp_path / "node-config.toml").write_text(f'approved-apps = "{good}"\n')
    marker = tmp_path / "marker"
    runner = subprocess.Popen(  # the guard's pipe stays open: each task must be served as soon as its token arrives
        [sys.executable, "-I", "-c", WARM, ",".join(map(str, paths)), "--runtime-api-address", "127.0.0.1:1",
         "--node-config", str(tmp_path / "node-config.toml"), "--expected-hash", good, "--idle-exit", "600",
         str(Path(app_guard.__file__).parent)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home"), "MARKER": str(marker)})
    runner.stdin.write("token-1\ntoken-2\ntoken-3\ntoken-4\n")  # all at once, as a busy node might
    runner.stdin.flush()
    lines: list[str] = []
    timer = threading.Timer(60, runner.kill)  # a token left unread would wait for the 600-s idle exit
    timer.start()
    while len(lines) < 8 and (line := runner.stdout.readline()):
        lines += [line.rstrip("\n")] if line.startswith(("REPLY", "STATUS")) else []
    timer.cancel()
    runner.stdin.close()
    runner.wait(timeout=60)
    assert lines[:4] == ["REPLY ok", "STATUS completed ", "REPLY ok", "STATUS completed "], lines
    assert lines[4] == "REPLY error" and lines[5].startswith("STATUS failed") and "not approved" in lines[5]
    assert lines[6:] == ["REPLY ok", "STATUS completed "]  # the loaded app goes on serving approved tasks
    runs = marker.read_text().splitlines()
    assert runs.count("imported") == 1 and len(runs) == 4 and len({r for r in runs if r.startswith("trained")}) == 1


class _LateContentRuntime:
    """The SuperNode's Runtime API as a runner sees it right after the guard claimed a task: the message's header
    is there, its content objects only ``late`` seconds later (the SuperNode is still downloading them)."""

    def __init__(self, late: float):
        from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
        from flwr.common.serde import context_to_proto, fab_to_proto, message_to_proto, run_to_proto
        from flwr.proto.runtime_pb2 import PullAppMessagesResponse, PullTaskInputResponse
        from flwr.supercore.fab import Fab
        from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree
        from flwr.supercore.run import Run
        from flwr.app.message import remove_content_from_message

        self.message = Message(RecordDict({"adapter": ArrayRecord({"w": Array(np.ones(3, np.float32))})}),
                               dst_node_id=5, message_type="train")
        self.message.metadata.__dict__["_message_id"] = self.message.object_id
        context = Context(run_id=7, node_id=5, node_config={}, state=RecordDict(), run_config={})
        self.task_input = PullTaskInputResponse(task_id=3, context=context_to_proto(context), run=run_to_proto(
            Run.create_empty(7)), fab=fab_to_proto(Fab("h", b"fab", {})))
        self.messages = PullAppMessagesResponse(
            messages_list=[message_to_proto(remove_content_from_message(self.message))],
            message_object_trees=[get_object_tree(self.message)])
        self.objects = {k: v.deflate() for k, v in get_all_nested_objects(self.message).items()}
        self.ready_at, self.asks = time.monotonic() + late, 0

    def PullTaskInput(self, _request):
        return self.task_input

    def PullMessages(self, _request):
        return self.messages

    def PullObject(self, request):
        from flwr.proto.message_pb2 import PullObjectResponse

        self.asks += 1
        if time.monotonic() < self.ready_at:
            return PullObjectResponse(object_found=True, object_available=False)
        return PullObjectResponse(object_found=True, object_available=True, object_content=self.objects[request.object_id])

    def ConfirmMessageReceived(self, _request):
        from flwr.proto.message_pb2 import ConfirmMessageReceivedResponse

        return ConfirmMessageReceivedResponse()


def test_a_warm_runner_takes_a_message_whose_content_arrives_late_within_a_second_not_flowers_seven(monkeypatch):
    """Flower's pull_task_input retries a missing object after 1, 2, 4 s; the warm runner's retries start at
    0.05 s, so content the SuperNode holds 0.3 s after the task was claimed is read by ≈ 0.4 s."""
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_task_id", "_run_id", "_node_id"):  # Flower's process-wide task identity, restored afterwards
        monkeypatch.setattr(TaskIdentity, name, 1)
    runtime = _LateContentRuntime(late=0.3)
    start = time.monotonic()
    message, context, run, fab = app_guard.pull_task_input_promptly(runtime)
    took = time.monotonic() - start
    assert message.object_id == runtime.message.object_id and message.metadata.message_id == runtime.message.object_id
    np.testing.assert_array_equal(message.content["adapter"]["w"].numpy(), np.ones(3, np.float32))
    assert (context.run_id, context.node_id, run.run_id, fab.content) == (7, 5, 7, b"fab")
    assert runtime.asks > 2 and took < 0.9, (runtime.asks, took)
