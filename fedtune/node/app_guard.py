"""A node runs a Flower ClientApp only if its operator approved that exact app (pinned FAB hash).

Why this exists: Flower's own FAB check (`flower-supernode --trusted-entities`) only accepts
FABs that a Flower-hosted SuperLink marked `valid_license` (flwr 1.41.0 and 1.42.0,
supernode/start_client_internal.py:344-353), so it cannot serve a self-hosted SuperLink.
Instead the SuperNode is started with `--isolation process`: it then never starts ClientApp
processes itself, it only queues a "flwr-clientapp" task per received message on its local
Runtime API (`--host/--port`, protected by `--superexec-auth-secret-file`).  This module is the
only process that holds the secret, so the only one that claims those tasks.  For each one it
checks the FAB's hash (the zip `flwr run` built and sent) against the node's approved list, and
only then starts Flower's own ClientApp runner
(`flwr.supernode.runtime.run_clientapp.run_clientapp`) for it, in a fresh `python -I` process with
a fresh FLWR_HOME, where the SHA-256 of the bytes about to be installed is checked again.  A task
whose app is not approved gets an error reply (code 7, INVALID_FAB) so the coordinator's
ServerApp sees a refusal instead of waiting; no byte of the app is installed or imported here.

With ``serve --warm-idle-exit SECONDS`` (``clients/start-supernode.sh`` sets 900) the approved tasks of one app
go to one long-lived runner process instead (``_warm``: the guard writes each task's token to its stdin), which
does per task what Flower's runner does, with Flower's own helpers, but keeps the loaded app, so a node loads its
model once rather than for every message; each task's FAB bytes are checked again.

Usage (``clients/start-supernode.sh`` does this)::

    fedtune app hash APP_DIR          # or: python fedtune/node/app_guard.py hash APP_DIR
    python -I fedtune/node/app_guard.py serve --runtime-api-address 127.0.0.1:9094 \
        --node-config node-config.toml --superexec-auth-secret-file superexec.secret

Approved apps live in the node config file that is also passed to `flower-supernode
--node-config` (one file for the node):  approved-apps = "<sha256> <sha256> ..."  (a string:
Flower copies every node-config key into the ClientApp's Context, and a Context value must be a
bool/int/float/str, so a TOML *list* here makes the SuperNode fail to serialise the Context;
a list is still accepted when the file is used by app_guard only).

Imports: flwr and the standard library only (``tests/test_app_pinning.py`` checks it).  Nothing
here imports the app being guarded (fedtune): the child must load the app's modules from the FAB
it just verified; a module of the same name already in `sys.modules` would be used instead.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import flwr
from flwr.app import Error, Message
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
from flwr.proto.task_pb2 import Task  # pylint: disable=E0611
from flwr.supercore.constant import TaskType
from flwr.supercore.interceptors import (
    RuntimeTokenHttpInterceptor,
    RuntimeVersionHttpInterceptor,
    SuperExecAuthHttpInterceptor,
)
from flwr.supercore.protobuf.client import ProtobufClientInterceptor
from flwr.supercore.runtime import RuntimeHttpClient

TESTED_FLWR = "1.42.0"  # the internals imported above were read in this version
APPROVED_KEY = "approved-apps"
_SHA256 = re.compile(r"[0-9a-f]{64}")

log = logging.getLogger("app_guard")


class AppNotApproved(Exception):
    """The FAB's bytes are not an app this node's operator approved."""


def sha256_hex(data: bytes) -> str:
    """The FAB hash as Flower computes it: SHA-256 of the zip bytes, lowercase hex."""
    return hashlib.sha256(data).hexdigest()


def not_approved_reason(fab_hash: str, fab_id: str = "", fab_version: str = "") -> str:
    """The refusal text the coordinator's ServerApp receives in `Error.reason`."""
    name = f" ({fab_id} {fab_version})" if fab_id else ""
    return f"app {fab_hash}{name} is not approved by this node's operator"


# --------------------------------------------------------------------------------------------
# Approved list (node side, re-read for every task so an operator's edit needs no restart)


def load_approved(node_config: Path) -> frozenset[str]:
    """Read `approved-apps` from the node config TOML; any problem means 'nothing approved'.

    Fail closed: a missing/unreadable file, a malformed entry or a missing key approves nothing.
    """
    try:
        with node_config.open("rb") as f:
            value = tomllib.load(f).get(APPROVED_KEY, "")
    except (OSError, tomllib.TOMLDecodeError) as err:
        log.error("cannot read %s (%s): no app is approved", node_config, err)
        return frozenset()
    entries = value.replace(",", " ").split() if isinstance(value, str) else value
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        log.error("%s: %s must be a string of hashes (or a list of strings): no app approved",
                  node_config, APPROVED_KEY)
        return frozenset()
    hashes = [e.strip().lower() for e in entries]
    bad = [h for h in hashes if not _SHA256.fullmatch(h)]
    if bad:
        log.error("%s: %s has entries that are not SHA-256 hex digests (%s): no app approved",
                  node_config, APPROVED_KEY, ", ".join(bad))
        return frozenset()
    return frozenset(hashes)


# --------------------------------------------------------------------------------------------
# `hash`: the FAB hash `flwr run APP_DIR` will send, computed with Flower's own builder


def app_hash(app_dir: Path) -> str:
    """Build the FAB exactly as `flwr run` does (flwr.cli.build.build_fab_from_disk) and hash it.

    Flower's builder writes every zip entry with a fixed timestamp (FAB_DATE) in sorted order,
    so the same files give the same bytes; nothing from the app is imported (the config is
    validated with check_module=False).
    """
    from flwr.cli.build import build_fab_from_disk  # pylint: disable=import-outside-toplevel

    app_dir = app_dir.expanduser().resolve()
    with (app_dir / "pyproject.toml").open("rb") as f:
        if "federations" in tomllib.load(f).get("tool", {}).get("flwr", {}):
            print("note: [tool.flwr.federations] present: `flwr run` migrates it to the Flower "
                  "config first (the table itself is never part of the FAB)", file=sys.stderr)
    return sha256_hex(build_fab_from_disk(app_dir))


# --------------------------------------------------------------------------------------------
# `serve`: claim ClientApp tasks from the SuperNode's Runtime API and gate them


def runtime_client(address: str, interceptors: list[ProtobufClientInterceptor],
                   root_certificates: str | None) -> RuntimeHttpClient:
    """A Runtime API client WITHOUT Flower's retry invoker.

    flwr's make_simple_http_retry_invoker() sends SIGINT to its own process on an HTTP 401
    (supercore/retry/http_retry.py:100-106); in this long-lived launcher a stale task token must
    not stop the node, so errors surface as exceptions and the serve loop backs off.
    """
    return RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=root_certificates is None,
        root_certificates=root_certificates,
        interceptors=interceptors,
        retry_invoker=None,
    )


@dataclass
class Child:
    """A running ClientApp process and the private directory it was given."""

    proc: subprocess.Popen[bytes]
    task_id: int
    run_id: int
    workdir: Path


@dataclass
class Guard:
    """The serve loop's settings and its running children."""

    address: str
    node_config: Path
    root_certificates: str | None
    work_base: Path
    children: dict[int, Child]
    warm_idle_exit: float = 0.0  # > 0: one warm runner per approved app, which exits after this idle time
    warm: dict[str, Child] = field(default_factory=dict)  # FAB hash -> its warm runner

    def task_client(self, token: str) -> RuntimeHttpClient:
        """A client authenticated as the task (what a ClientApp process itself would use)."""
        return runtime_client(self.address, [RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                                             RuntimeTokenHttpInterceptor(token)], self.root_certificates)

    def handle(self, task: Task, token: str) -> None:
        """Decide one claimed task: launch the ClientApp if approved, else refuse it."""
        approved = load_approved(self.node_config)
        claimed = task.fab_hash  # the hash the SuperNode stored the run's FAB under
        if claimed in approved:
            log.info("task %d run %d: app %s is approved -> %s (it re-checks the FAB bytes)", task.task_id,
                     task.run_id, claimed, "its warm runner" if self.warm_idle_exit else "Flower's ClientApp runner")
            if self.warm_idle_exit:
                self.hand_to_warm(task, token)
            else:
                self.launch(task, token)
        else:
            self.refuse(task, token)

    def refuse(self, task: Task, token: str) -> None:
        """Reply with Error(INVALID_FAB) to the task's message and finish the task as failed.

        Uses Flower's own helpers from run_clientapp (pull_task_input, push_message,
        push_task_output) so the reply is exactly what a ClientApp process would push.
        Nothing from the FAB is written to disk or imported.
        """
        # pylint: disable-next=import-outside-toplevel
        from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

        client = self.task_client(token)
        reason = not_approved_reason(task.fab_hash)
        try:
            message, context, run, fab = pull_task_input(client)
            actual = sha256_hex(fab.content)
            reason = not_approved_reason(actual, run.fab_id, run.fab_version)
            log.warning("task %d run %d: REFUSED %s (sha256 of FAB bytes %s, SuperNode's hash %s, "
                        "%d bytes); replying Error(code=%d)", task.task_id, task.run_id,
                        f"{run.fab_id} {run.fab_version}", actual, fab.hash_str, len(fab.content),
                        ErrorCode.INVALID_FAB)
            push_message(client, Message(Error(code=ErrorCode.INVALID_FAB, reason=reason),
                                         reply_to=message), context)
        except Exception as err:  # pylint: disable=broad-exception-caught
            log.error("task %d run %d: refusing, but the error reply could not be pushed: %r",
                      task.task_id, task.run_id, err)
        finally:
            push_task_output(client, context=None, sub_status=SubStatus.FAILED, details=reason)
            client.close()

    def launch(self, task: Task, token: str) -> None:
        """Start `app_guard.py _clientapp` for the token (one process for this one task)."""
        self.start_child(task, ["_clientapp"], token=token)

    def hand_to_warm(self, task: Task, token: str) -> None:
        """Write the token to the app's warm runner, starting one if it has none (or it exited)."""
        runner = self.warm.get(task.fab_hash)
        if runner is None or runner.proc.poll() is not None:
            runner = self.start_child(task, ["_warm", "--idle-exit", str(self.warm_idle_exit)], stdin=subprocess.PIPE)
            self.warm[task.fab_hash] = runner
        assert runner.proc.stdin is not None
        try:
            runner.proc.stdin.write(f"{token}\n".encode())
            runner.proc.stdin.flush()
        except BrokenPipeError:  # it exited between the check and the write: a fresh one takes the task
            del self.warm[task.fab_hash]
            self.hand_to_warm(task, token)

    def start_child(self, task: Task, mode: list[str], token: str | None = None, **popen: Any) -> Child:
        """Start `app_guard.py <mode>` for the task's app, with a fresh private FLWR_HOME (and the token in a
        file only it can read, for a one-task runner)."""
        workdir = Path(tempfile.mkdtemp(prefix=f"task-{task.task_id}-", dir=self.work_base))  # 0700
        if token is not None:
            (workdir / "token").write_text(token)
            (workdir / "token").chmod(0o600)
            mode = [*mode, "--token-file", str(workdir / "token")]
        cmd = [sys.executable, "-I", str(Path(__file__).resolve()), *mode,
               "--runtime-api-address", self.address, "--node-config", str(self.node_config),
               "--expected-hash", task.fab_hash, "--parent-pid", str(os.getpid())]
        if self.root_certificates:
            cmd += ["--root-certificates", self.root_certificates]
        env = {**os.environ, "FLWR_HOME": str(workdir / "flwr-home")}
        proc = subprocess.Popen(cmd, env=env, **popen)  # pylint: disable=consider-using-with
        child = Child(proc, task.task_id, task.run_id, workdir)
        self.children[proc.pid] = child
        log.info("task %d run %d: %s process %d started (FLWR_HOME=%s)", task.task_id, task.run_id, mode[0],
                 proc.pid, env["FLWR_HOME"])
        return child

    def reap(self) -> None:
        """Log finished ClientApp processes and delete their private directories."""
        for pid, child in list(self.children.items()):
            if (code := child.proc.poll()) is not None:
                log.info("task %d run %d: ClientApp process %d exited with code %d", child.task_id,
                         child.run_id, pid, code)
                shutil.rmtree(child.workdir, ignore_errors=True)
                del self.children[pid]
                self.warm = {h: w for h, w in self.warm.items() if w is not child}


def serve(args: argparse.Namespace) -> None:
    """Loop forever: claim pending flwr-clientapp tasks one at a time and handle each."""
    secret = Path(args.superexec_auth_secret_file).read_bytes() if args.superexec_auth_secret_file else None
    interceptors: list[ProtobufClientInterceptor] = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
    if secret:
        interceptors.append(SuperExecAuthHttpInterceptor(
            master_secret=secret, protected_methods=frozenset({"/flwr.proto.Runtime/AcquireTask"})))
    acquirer = runtime_client(args.runtime_api_address, interceptors, args.root_certificates)
    work_base = Path(args.work_dir or tempfile.mkdtemp(prefix="app_guard-"))
    work_base.mkdir(parents=True, exist_ok=True)
    guard = Guard(args.runtime_api_address, Path(args.node_config).resolve(), args.root_certificates,
                  work_base, {}, warm_idle_exit=args.warm_idle_exit)
    approved = load_approved(guard.node_config)
    log.info("serving ClientApp tasks of the SuperNode at %s; %d approved app(s) in %s: %s",
             args.runtime_api_address, len(approved), guard.node_config, ", ".join(sorted(approved)) or "-")
    backoff = args.poll_interval
    while True:
        guard.reap()
        try:
            res = acquirer.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
            backoff = args.poll_interval
        except Exception as err:  # pylint: disable=broad-exception-caught
            log.warning("Runtime API at %s unavailable (%s); retrying in %.0fs", args.runtime_api_address,
                        err, backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
            continue
        if res.HasField("task") and res.token:
            log.info("task %d run %d: claimed (type %s, FAB hash %s)", res.task.task_id,
                     res.task.run_id, res.task.type, res.task.fab_hash)
            guard.handle(res.task, res.token)
        else:
            time.sleep(args.poll_interval)


# --------------------------------------------------------------------------------------------
# `_clientapp` (internal): the child process; Flower's own runner with a gate before install


def clientapp_module(fab: bytes) -> str:
    """The top-level module of the FAB's ClientApp component (read from its pyproject.toml)."""
    with zipfile.ZipFile(io.BytesIO(fab)) as z:
        config = tomllib.loads(z.read("pyproject.toml").decode("utf-8"))
    ref: str = config["tool"]["flwr"]["app"]["components"]["clientapp"]
    return ref.split(":", 1)[0].split(".", 1)[0]


class FabGate:
    """What stands between a FAB's bytes and the import of its ClientApp, in either runner: the bytes must
    hash to an approved app and to the hash the task was approved under, and the app's top module must
    come from where those bytes were installed (never from a copy already imported)."""

    def __init__(self, node_config: Path, expected_hash: str, flwr_home: Path):
        self.node_config, self.expected_hash, self.flwr_home = node_config, expected_hash, flwr_home
        self.top_module = ""

    def check(self, fab: bytes) -> str:
        """Refuse (AppNotApproved) unless ``fab`` is the approved app; return its hash."""
        actual = sha256_hex(fab)
        if actual not in load_approved(self.node_config):
            raise AppNotApproved(not_approved_reason(actual))
        if actual != self.expected_hash:
            raise AppNotApproved(f"FAB bytes hash to {actual}, not to the approved {self.expected_hash}")
        return actual

    def install(self, install_from_fab: Callable[..., Path], fab: bytes, *a: Any, **kw: Any) -> Path:
        actual = self.check(fab)
        self.top_module = clientapp_module(fab)
        if self.top_module in sys.modules:  # would be used instead of the FAB's copy (object_ref.load_app)
            raise AppNotApproved(f"module {self.top_module!r} is already imported in the runner process")
        log.info("FAB %s verified (sha256 of %d bytes); installing into %s", actual, len(fab), self.flwr_home)
        return install_from_fab(fab, *a, **kw)

    def loaded(self, app: Any) -> Any:
        """``app`` once its module is known to come from the verified FAB."""
        origin = Path(getattr(sys.modules.get(self.top_module), "__file__", "") or "/").resolve()
        if not origin.is_relative_to(self.flwr_home):
            raise AppNotApproved(f"module {self.top_module!r} was loaded from {origin}, not from the FAB")
        log.info("ClientApp module %r loaded from the verified FAB (%s)", self.top_module, origin)
        return app


def clientapp_child(args: argparse.Namespace) -> None:
    """Run flwr's run_clientapp for one token, refusing inside it before the FAB is installed.

    run_clientapp pulls the task input (message, context, run, FAB), then calls
    `install_from_fab(fab.content, ...)` and only after that imports the app
    (supernode/runtime/run_clientapp.py:151-193).  The gate replaces that one name: it
    recomputes the SHA-256 of the bytes it is about to install and requires it to be approved
    and equal to the hash the task was approved under.  Raising there makes Flower itself push
    an Error reply for the message (code 2, reason naming the refusal) and exit.
    """
    # pylint: disable-next=import-outside-toplevel
    from flwr.supernode.runtime import run_clientapp as rc

    gate = FabGate(Path(args.node_config), args.expected_hash, Path(os.environ["FLWR_HOME"]).resolve())
    install_from_fab: Callable[..., Path] = rc.install_from_fab
    get_load_client_app_fn: Callable[..., Callable[[str, str, str], Any]] = rc.get_load_client_app_fn

    def gated_install(fab: bytes, *a: Any, **kw: Any) -> Path:
        return gate.install(install_from_fab, fab, *a, **kw)

    def checked_loader(*a: Any, **kw: Any) -> Callable[[str, str, str], Any]:
        load = get_load_client_app_fn(*a, **kw)
        return lambda fab_id, fab_version, fab_hash: gate.loaded(load(fab_id, fab_version, fab_hash))

    rc.install_from_fab = gated_install
    rc.get_load_client_app_fn = checked_loader
    rc.run_clientapp(
        runtime_api_address=args.runtime_api_address,
        token=Path(args.token_file).read_text().strip(),
        insecure=args.root_certificates is None,
        certificates=Path(args.root_certificates).read_bytes() if args.root_certificates else None,
        parent_pid=args.parent_pid,
        runtime_dependency_install=False,  # never `uv sync` what the FAB asks for: not pinned
    )


# --------------------------------------------------------------------------------------------
# `_warm` (internal): one process per approved app that runs its tasks one after another


def warm_child(args: argparse.Namespace) -> None:
    """Serve the task tokens the guard writes to stdin, one per line, with one loaded ClientApp.

    Flower 1.42 runs one message per ClientApp process, so a deployed node would import torch and load
    its model for every message.  This runner does, for each token, what Flower's run_clientapp does
    (pull the task input, run the app, push the reply and the task output, with Flower's own helpers
    and the task's own Runtime API token) but keeps the process, and with it the app's module and
    whatever the app caches in memory (the model, the records), for the next task of the same app.
    The FAB is verified and installed once; every later task's FAB bytes are checked again.  Exits at
    end of input (the guard stopped) or after ``--idle-exit`` seconds without a task (frees memory).
    """
    # pylint: disable-next=import-outside-toplevel
    from flwr.supercore.app_utils import start_parent_process_monitor

    if args.parent_pid:
        start_parent_process_monitor(args.parent_pid)
    gate = FabGate(Path(args.node_config), args.expected_hash, Path(os.environ["FLWR_HOME"]).resolve())
    app = None
    stdin = sys.stdin.buffer.raw  # unbuffered: a line read ahead into a buffer would be invisible to select()
    while select.select([stdin], [], [], args.idle_exit)[0]:
        token = stdin.readline().decode().strip()
        if not token:
            break  # the guard closed the pipe
        app = run_task(runtime_client(args.runtime_api_address, [
            RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"), RuntimeTokenHttpInterceptor(token)],
            args.root_certificates), gate, app)
        if app is None:
            break  # not loaded (refused or broken): the guard starts a fresh process for the next task
    log.info("warm ClientApp runner for %s exits", args.expected_hash)


# The SuperNode queues a task as soon as a message's header arrives, before it has its content; Flower's
# pull_task_input then retries a missing object after 1, 2, 4 s (flwr 1.42 PULL_INITIAL_BACKOFF = 1), which cost
# a warm runner 7-8 s on most train and evaluate messages.  Retrying from 0.05 s costs at most ~1 s late.
PULL_FIRST_RETRY, PULL_RETRY_CAP = 0.05, 1.0


def pull_task_input_promptly(client: RuntimeHttpClient) -> tuple[Message, Any, Any, Any]:
    """Flower's ``pull_task_input`` (supernode/runtime/run_clientapp.py, 1.42), step for step with the names it
    uses, except that a message object the SuperNode does not hold yet is retried from ``PULL_FIRST_RETRY`` s."""
    from flwr.supernode.runtime import run_clientapp as rc  # pylint: disable=import-outside-toplevel

    res = client.PullTaskInput(rc.PullTaskInputRequest())
    rc.TaskIdentity.task_id, rc.TaskIdentity.run_id = res.task_id, res.run.run_id
    rc.TaskIdentity.node_id = res.context.node_id
    context, run, fab = rc.context_from_proto(res.context), rc.run_from_proto(res.run), rc.fab_from_proto(res.fab)
    pulled = client.PullMessages(rc.PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("No messages received from Runtime API")
    node, tree = rc.Node(node_id=context.node_id), pulled.message_object_trees[0]
    message = rc.pull_and_inflate_object_from_tree(
        tree, rc.make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        rc.make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
        return_type=Message, initial_backoff=PULL_FIRST_RETRY, backoff_cap=PULL_RETRY_CAP,
        max_tries_per_object=None)  # bounded by Flower's time limit (2 h), as its own retries are
    message.metadata.__dict__["_message_id"] = tree.object_id  # as Flower does: the deflated message lacks it
    return message, context, run, fab


def run_task(client: RuntimeHttpClient, gate: FabGate, app: Any) -> Any:
    """One task, as Flower's run_clientapp runs it (supernode/runtime/run_clientapp.py:81-236): the app is
    installed and loaded on the first task only.  Returns the loaded app (None if loading failed)."""
    # pylint: disable-next=import-outside-toplevel
    from flwr.cli.install import install_from_fab
    from flwr.clientapp.utils import get_load_client_app_fn
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    message = context = reply = None
    status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
    start = time.monotonic()
    times = [("start", start)]  # (step just finished, when): a failed step simply has no entry
    try:
        message, context, run, fab = pull_task_input_promptly(client)
        times.append(("pull", time.monotonic()))
        if app is None:
            gate.install(install_from_fab, fab.content, skip_prompt=True)
            load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
            app = gate.loaded(load(run.fab_id, run.fab_version, fab.hash_str))
        else:
            gate.check(fab.content)
        times.append(("check", time.monotonic()))
        reply = app(message=message, context=context)
        times.append(("app", time.monotonic()))
        status, details = SubStatus.COMPLETED, ""
    except Exception as ex:  # pylint: disable=broad-exception-caught
        log.error("ClientApp task failed", exc_info=ex)
        details = f"{type(ex)}:<'{ex}'>"
        code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION if app is not None else ErrorCode.LOAD_CLIENT_APP_EXCEPTION
        reply = Message(Error(code=code, reason=details), reply_to=message) if message is not None else None
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
        except Exception as ex:  # pylint: disable=broad-exception-caught
            log.error("could not push the reply", exc_info=ex)
        push_task_output(client, context=context, sub_status=status, details=details)
        heartbeat.stop()
        client.close()
        times.append(("push", time.monotonic()))
        kind = message.metadata.message_type if message is not None else "?"
        steps = " ".join(f"{step} {t - before:.2f}" for (_, before), (step, t) in zip(times, times[1:]))
        log.info("%s task %s in %.2f s (%s)", kind, status, times[-1][1] - start, steps)
    return app


# --------------------------------------------------------------------------------------------


def main() -> None:
    """Command line entry point."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s app_guard[%(process)d] %(levelname)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per poll otherwise
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_hash = sub.add_parser("hash", help="print the FAB hash `flwr run APP_DIR` would send")
    p_hash.add_argument("app_dir", type=Path)
    p_serve = sub.add_parser("serve", help="gate the SuperNode's ClientApp tasks (runs forever)")
    p_serve.add_argument("--runtime-api-address", "--clientappio-api-address", required=True,
                         help="the SuperNode's Runtime API, host:port of flower-supernode --host/--port")
    p_serve.add_argument("--node-config", required=True, help="node config TOML with approved-apps")
    p_serve.add_argument("--superexec-auth-secret-file", help="same file as flower-supernode's")
    p_serve.add_argument("--root-certificates", help="CA of a TLS Runtime API (default: plain HTTP)")
    p_serve.add_argument("--work-dir", help="where per-task FLWR_HOMEs are created (default: a temp dir)")
    p_serve.add_argument("--poll-interval", type=float, default=0.2,
                         help="seconds between asks for a task (a local call to the SuperNode)")
    p_serve.add_argument("--warm-idle-exit", type=float, default=0.0, metavar="SECONDS",
                         help="> 0: keep one ClientApp process per approved app across tasks (the model stays "
                              "loaded), ended after this many idle seconds; 0: a fresh process per task")
    p_child = sub.add_parser("_clientapp")  # internal: started by `serve`, one task
    p_warm = sub.add_parser("_warm")  # internal: started by `serve --warm-idle-exit`, task tokens on stdin
    for p in (p_child, p_warm):
        for flag in ("--runtime-api-address", "--node-config", "--expected-hash"):
            p.add_argument(flag, required=True)
        p.add_argument("--root-certificates")
        p.add_argument("--parent-pid", type=int)
    p_child.add_argument("--token-file", required=True)
    p_warm.add_argument("--idle-exit", type=float, required=True)
    args = parser.parse_args()

    if flwr.__version__ != TESTED_FLWR:
        log.warning("flwr %s installed; app_guard relies on internals of flwr %s", flwr.__version__, TESTED_FLWR)
    if args.cmd == "hash":
        print(app_hash(args.app_dir))
    elif args.cmd == "serve":
        serve(args)
    elif args.cmd == "_warm":
        warm_child(args)
    else:
        clientapp_child(args)


if __name__ == "__main__":
    main()
