"""A real deployment on loopback: SuperLink + 3 SuperNodes as separate processes, TLS and node
authentication on, started with the operator scripts in server/ and clients/, each node with its
signing key, the pinned roster and this checkout's app hash approved; a run of the app (tiny
model, DP and SecAgg+ on) submitted with `flwr run`; an unknown node refused; a canary planted in
one node's data found nowhere on the coordinator; a modified app refused before any of its code
runs on a node.  Run alone: pytest -m deployment.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fedtune.common.data import generate_triage
from fedtune.common.data.records import write_jsonl
from fedtune.lab.simulation import read_metrics

pytestmark = pytest.mark.deployment

ROOT = Path(__file__).resolve().parent.parent
CANARY = "CANARY-a9f3e1c7-do-not-leak"
NODES = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """Every process the test starts, each in its own process group, all stopped at the end."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd, env, log: Path) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        """SIGTERM every process group (the SuperLink/SuperNode and the helpers they spawned), then
        SIGKILL whatever is left in those groups."""
        groups = [p.pid for p in self.procs]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pgid in groups:
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


def _wait_healthy(port: int, ca: Path, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    ctx = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"SuperLink exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/health", context=ctx, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"SuperLink not healthy after {timeout}s: {log.read_text()[-2000:]}")


def _run(cmd, env, timeout=120) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{cmd} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, tiny_model_dir):
    base = tmp_path_factory.mktemp("deploy")
    coord, port = base / "coordinator", _free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "FEDTUNE_COORDINATOR_DIR": str(coord), "FEDTUNE_SUPERLINK_BIND": "127.0.0.1",
           "FEDTUNE_SUPERLINK_PORT": str(port), "PYTHONUNBUFFERED": "1"}
    procs = Processes()
    try:
        _run(["bash", ROOT / "server" / "init-coordinator.sh", "127.0.0.1", "localhost"], env)
        coord_log = base / "superlink.out"
        link = procs.start(["bash", ROOT / "server" / "start-superlink.sh"], env, coord_log)
        _wait_healthy(port, coord / "certs" / "ca.crt", link, coord_log)

        records = generate_triage(60 * (NODES + 1), seed=3)
        first = records[0]
        records[0] = dataclasses.replace(first, messages=tuple(
            {**m, "content": m["content"] + f" Patient ref {CANARY}."} if m["role"] == "user" else m
            for m in first.messages))
        nodes = [base / f"node-{i}" for i in range(NODES + 1)]  # the last one is never admitted
        for i, node_dir in enumerate(nodes):
            _run([sys.executable, "-m", "fedtune.cli", "node-key", "--out", str(node_dir), "--name", f"hospital-{i}"],
                 env)
        roster = base / "roster.toml"  # assembled from the admitted nodes' entries, pinned by each of them
        _run([sys.executable, "-m", "fedtune.cli", "roster", "build", "--out", str(roster),
              *[str(d / f"hospital-{i}.roster-entry") for i, d in enumerate(nodes[:NODES])]], env)
        approved = _run([sys.executable, "-m", "fedtune.cli", "app", "hash", str(ROOT)], env).stdout.strip()
        for i, node_dir in enumerate(nodes):
            (node_dir / "ca.crt").write_bytes((coord / "certs" / "ca.crt").read_bytes())
            write_jsonl(records[60 * i: 60 * (i + 1)], node_dir / "records.jsonl")
            (node_dir / "node-config.toml").write_text(
                f'name = "hospital-{i}"\ndata-path = "{node_dir / "records.jsonl"}"\n'
                f'state-dir = "{node_dir / "state"}"\nmax-epsilon = 8.0\n'
                f'signing-key = "{node_dir / "signing-key"}"\nroster = "{roster}"\n'
                f'approved-apps = "{approved}"\n'  # this checkout, as `flwr run` will send it
                'min-eval-records = 5\n')  # 6 held-out records each: a tiny test federation
            if i < NODES:
                _run(["bash", ROOT / "server" / "admit-node.sh", node_dir / "node-key.pub", f"hospital-{i}"], env)
        assert CANARY in (nodes[0] / "records.jsonl").read_text()  # the canary is really in node 0's data

        node_env = lambda d: {**env, "FEDTUNE_NODE_DIR": str(d), "FEDTUNE_SUPERLINK": f"127.0.0.1:{port}",  # noqa: E731
                               "FEDTUNE_NODE_PORT": str(_free_port())}
        for d in nodes[:NODES]:
            procs.start(["bash", ROOT / "clients" / "start-supernode.sh"], node_env(d), d / "supernode.out")
        rogue = procs.start(["bash", ROOT / "clients" / "start-supernode.sh"], node_env(nodes[NODES]),
                            nodes[NODES] / "supernode.out")

        results = base / "results"
        run_config = base / "run-config.toml"
        run_config.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in {
            "output.dir": str(results), "model.name": str(tiny_model_dir), "model.precision": "fp32",
            "lora.r": 4, "lora.alpha": 8.0, "train.batch-size": 4, "train.local-steps": 2,
            "federation.rounds": 2, "federation.min-nodes": NODES, "federation.node-wait-timeout": 120.0,
            "privacy.enabled": True, "secagg.enabled": True, "secagg.stage-timeout": 120.0,
            # these files declare no label set, so answers are generated, and the random tiny model never
            # ends one: 8 tokens per answer, not 64
            "train.eval-max-new-tokens": 8,
        }.items()) + "\n")
        submit = subprocess.run(["bash", ROOT / "server" / "submit-run.sh", run_config], env=env,
                                capture_output=True, text=True, timeout=900)
        yield {"base": base, "coord": coord, "results": results, "nodes": nodes, "rogue": rogue, "submit": submit,
               "env": env, "coord_log": coord_log, "approved": approved}
    finally:
        procs.stop_all()
        assert not procs.alive_groups(), "a started process (or one it spawned) survived"


def test_a_tls_federation_with_authenticated_nodes_completes_the_run(deployment, tiny_model_dir):
    results = deployment["results"]
    assert deployment["submit"].returncode == 0, deployment["submit"].stdout[-3000:]
    assert (results / "report.md").is_file(), deployment["submit"].stdout[-3000:] + deployment["submit"].stderr[-2000:]
    metrics = read_metrics(results / "metrics.jsonl")
    assert [m["round"] for m in metrics] == [0, 1, 2]
    for m in metrics[1:]:
        assert m["secure_aggregation"] is True and m["aggregated"] == NODES and m["aggregation"] == "fedavg"
        names = sorted(n["name"] for n in m["nodes"].values())
        assert names == [f"hospital-{i}" for i in range(NODES)]  # from each node's own config
        assert all(n["epsilon"] <= n["max_epsilon"] for n in m["nodes"].values())

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(results / "adapter"))
    assert any("lora_" in n for n, _ in model.named_parameters())
    for node in deployment["nodes"][:NODES]:  # each node's ledger lives in its own state dir
        assert list((node / "state").rglob("*.json")), f"no privacy ledger in {node / 'state'}"


def test_a_node_with_an_unknown_key_is_refused(deployment):
    rogue = deployment["rogue"]
    rogue.wait(timeout=60)
    assert rogue.returncode != 0
    log = (deployment["nodes"][NODES] / "supernode.out").read_text()
    assert "Failed to activate SuperNode" in log or "2004" in log, log[-2000:]


def test_a_canary_in_a_node_s_data_reaches_nothing_on_the_coordinator(deployment):
    needle = CANARY.encode()
    places = [deployment["coord"], deployment["results"], deployment["coord_log"]]
    checked = 0
    for place in places:
        files = [place] if place.is_file() else [p for p in place.rglob("*") if p.is_file()]
        for f in files:
            checked += 1
            assert needle not in f.read_bytes(), f"canary found in {f}"
    db = deployment["coord"] / "state" / "superlink.db"
    assert db.is_file() and checked > 10
    assert needle not in deployment["submit"].stdout.encode()  # the streamed ServerApp log


def test_the_deployed_run_resumes_through_its_run_config_and_the_nodes_ledgers_still_rule(deployment):
    """The coordinator continues the finished 2-round run from its checkpoint with ``output.resume = true``
    and one more round. The nodes' own ledgers already hold ε ≈ 8 of their budget of 8 (σ was paced
    for 2 rounds); each node paces round 3 from what is left, with far more noise, and no node's ε
    ends above its budget: the resume changed the run, never a node's privacy budget."""
    results, base = deployment["results"], deployment["base"]
    flat = {line.split(" = ", 1)[0]: json.loads(line.split(" = ", 1)[1])
            for line in (base / "run-config.toml").read_text().splitlines() if line}
    resumed = base / "resume.toml"
    resumed.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in {
        **flat, "federation.rounds": 3, "output.resume": True}.items()) + "\n")
    submit = subprocess.run(["bash", ROOT / "server" / "submit-run.sh", resumed], env=deployment["env"],
                            capture_output=True, text=True, timeout=900)
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-2000:]
    run = json.loads((results / "run.json").read_text())
    assert [r["after_round"] for r in run["resumed"]] == [2], submit.stdout[-3000:]
    metrics = read_metrics(results / "metrics.jsonl")
    assert [m["round"] for m in metrics] == [0, 1, 2, 3] and "stopped" not in run["finished"]
    sigmas = [[n["noise_multiplier"] for n in m["nodes"].values()] for m in metrics[2:]]
    assert min(sigmas[1]) > max(sigmas[0])  # round 3: paced from the little budget left
    for node in deployment["nodes"][:NODES]:
        (ledger,) = (node / "state").rglob("privacy-ledger-*.json")
        saved = json.loads(ledger.read_text())
        assert [r["round"] for r in saved["rounds"]] == [1, 2, 3] and saved["epsilon"] <= 8.0


def test_a_modified_app_is_refused_before_any_of_its_code_runs(deployment, tmp_path):
    """The coordinator submits this app with one line added to the node's ClientApp module (code
    that would leave a file on the node when imported): every node refuses it, by its hash."""
    app, marker = tmp_path / "modified-app", tmp_path / "modified-clientapp-ran"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file():
            (app / rel).parent.mkdir(parents=True, exist_ok=True)
            (app / rel).write_bytes((ROOT / rel).read_bytes())
    client_app = app / "fedtune" / "node" / "client_app.py"
    client_app.write_text(f"open({str(marker)!r}, 'w').write('ran')\n" + client_app.read_text())
    config = tmp_path / "run-config.toml"
    config.write_text((deployment["base"] / "run-config.toml").read_text().replace(
        str(deployment["results"]), str(tmp_path / "results")) + "federation.round-retries = 0\n")
    submit = subprocess.run(["bash", ROOT / "server" / "submit-run.sh", config],
                            env={**deployment["env"], "FEDTUNE_REPO": str(app)}, capture_output=True, text=True,
                            timeout=600)
    assert not marker.exists(), "the modified ClientApp ran on a node"
    metrics = read_metrics(tmp_path / "results" / "metrics.jsonl")
    errors = [n.get("error", "") for m in metrics for n in m["nodes"].values()]
    assert errors and all("is not approved by this node's operator" in e for e in errors), errors
    assert all(m.get("aggregated", 0) == 0 for m in metrics), submit.stdout[-2000:]
    for node in deployment["nodes"][:NODES]:
        assert "REFUSED" in (node / "supernode.out").read_text()
