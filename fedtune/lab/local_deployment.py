"""A real Flower deployment on this machine: a SuperLink and SuperNodes as separate processes on
loopback, with TLS and node authentication, set up and started with the operator scripts in
``server/`` and ``clients/`` exactly as the deployment guide has an operator run them.

Each node gets its own folder with its signing key, the coordinator's CA certificate, its records
and its ``node-config.toml`` pinning the roster and this checkout's app hash.  Used by the
deployment test (``tests/test_deployment.py``) and the deployment-overhead benchmark
(``benchmarks/deploy_overhead.py``); needs a source checkout (the scripts live beside the package).
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from fedtune.common.data.records import Example, write_jsonl
from fedtune.lab.simulation import APP_DIR as ROOT  # the checkout: server/, clients/ and the Flower app
from fedtune.lab.simulation import free_port


def run_checked(cmd, env, timeout: float = 120) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


class Processes:
    """Every process started, each in its own process group, all stopped at the end."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd, env, log: Path) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        """SIGTERM every process group (the SuperLink/SuperNode and the helpers they spawned), then
        SIGKILL whatever is left in those groups."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pgid in [p.pid for p in self.procs]:
                try:
                    os.killpg(pgid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 15
            while self.alive_groups() and time.monotonic() < deadline:
                time.sleep(0.2)
        for p in self.procs:
            p.wait(timeout=5)

    def alive_groups(self) -> list[int]:
        alive = []
        for p in self.procs:
            p.poll()
            try:
                os.killpg(p.pid, 0)
                alive.append(p.pid)
            except ProcessLookupError:
                pass
        return alive


def wait_healthy(port: int, ca: Path, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    ctx = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"SuperLink exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/health", context=ctx, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"SuperLink not healthy after {timeout}s: {log.read_text()[-2000:]}")


@dataclass
class LocalDeployment:
    """A started deployment: ``nodes[i]`` is node i's folder (``hospital-i``); the last ``unadmitted``
    of them run a SuperNode the coordinator never admitted."""

    base: Path
    env: dict
    coordinator: Path
    superlink_log: Path
    nodes: list[Path]
    supernodes: list[subprocess.Popen]
    approved: str  # the app hash every node pins
    processes: Processes = field(repr=False, default_factory=Processes)

    def submit(self, run_config: Path, timeout: float = 900, env: Mapping[str, str] | None = None):
        """``server/submit-run.sh RUN_CONFIG``: the run, streamed to completion."""
        return subprocess.run(["bash", ROOT / "server" / "submit-run.sh", run_config], env=dict(env or self.env),
                              capture_output=True, text=True, timeout=timeout)

    def stop(self) -> None:
        self.processes.stop_all()


def start_deployment(base: Path, node_records: Sequence[Sequence[Example]], unadmitted: int = 0,
                     node_settings: str = "min-eval-records = 5\n",
                     node_env: dict[str, str] | None = None) -> LocalDeployment:
    """Coordinator (CA, certificates, SuperLink) and one node per entry of ``node_records`` (keys,
    roster of the admitted ones, records, node config with ``node_settings`` appended), all started;
    ``node_env`` is added to each node's environment (e.g. FEDTUNE_WARM_IDLE_EXIT=0).
    The caller stops it (``stop``); if this raises, whatever it started is stopped already."""
    coord, port = base / "coordinator", free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "FEDTUNE_COORDINATOR_DIR": str(coord), "FEDTUNE_SUPERLINK_BIND": "127.0.0.1",
           "FEDTUNE_SUPERLINK_PORT": str(port), "PYTHONUNBUFFERED": "1"}
    procs = Processes()
    try:
        return _start(base, coord, port, env, procs, node_records, unadmitted, node_settings, node_env or {})
    except BaseException:
        procs.stop_all()
        raise


def _start(base: Path, coord: Path, port: int, env: dict, procs: Processes, node_records, unadmitted: int,
           node_settings: str, node_env: dict[str, str]) -> LocalDeployment:
    run_checked(["bash", ROOT / "server" / "init-coordinator.sh", "127.0.0.1", "localhost"], env)
    log = base / "superlink.out"
    nodes = [base / f"node-{i}" for i in range(len(node_records))]
    approved = run_checked([sys.executable, "-m", "fedtune.cli", "app", "hash", str(ROOT)], env).stdout.strip()
    deployment = LocalDeployment(base, env, coord, log, nodes, [], approved, procs)
    link = procs.start(["bash", ROOT / "server" / "start-superlink.sh"], env, log)
    wait_healthy(port, coord / "certs" / "ca.crt", link, log)
    _prepare_nodes(deployment, node_records, len(node_records) - unadmitted, node_settings)
    # nodes on one machine share its cores: each gets its share of torch's threads, unless the caller set them
    threads = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // len(nodes)))}
    for node_dir in nodes:
        one_env = {**threads, **env, **node_env, "FEDTUNE_NODE_DIR": str(node_dir), "FEDTUNE_SUPERLINK": f"127.0.0.1:{port}",
                   "FEDTUNE_NODE_PORT": str(free_port())}
        deployment.supernodes.append(procs.start(["bash", ROOT / "clients" / "start-supernode.sh"], one_env,
                                                 node_dir / "supernode.out"))
    return deployment


def _prepare_nodes(d: LocalDeployment, node_records, admitted: int, node_settings: str) -> None:
    """Each node's key, records and config; the roster of the first ``admitted``, whom the coordinator admits."""
    cli, env = [sys.executable, "-m", "fedtune.cli"], d.env
    for i, node_dir in enumerate(d.nodes):
        run_checked([*cli, "node-key", "--out", str(node_dir), "--name", f"hospital-{i}"], env)
    roster = d.base / "roster.toml"  # assembled from the admitted nodes' entries, pinned by each of them
    run_checked([*cli, "roster", "build", "--out", str(roster),
                 *[str(n / f"hospital-{i}.roster-entry") for i, n in enumerate(d.nodes[:admitted])]], env)
    for i, (node_dir, records) in enumerate(zip(d.nodes, node_records)):
        (node_dir / "ca.crt").write_bytes((d.coordinator / "certs" / "ca.crt").read_bytes())
        write_jsonl(records, node_dir / "records.jsonl")
        (node_dir / "node-config.toml").write_text(
            f'name = "hospital-{i}"\ndata-path = "{node_dir / "records.jsonl"}"\n'
            f'state-dir = "{node_dir / "state"}"\nmax-epsilon = 8.0\n'
            f'signing-key = "{node_dir / "signing-key"}"\nroster = "{roster}"\n'
            f'approved-apps = "{d.approved}"\n' + node_settings)  # this checkout, as `flwr run` will send it
        if i < admitted:
            run_checked(["bash", ROOT / "server" / "admit-node.sh", node_dir / "node-key.pub", f"hospital-{i}"], env)
