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
import subprocess

import pytest

from fedtune.common.data import generate_triage
from fedtune.lab.local_deployment import start_deployment
from fedtune.lab.simulation import APP_DIR as ROOT
from fedtune.lab.simulation import read_metrics, write_run_config

pytestmark = pytest.mark.deployment

CANARY = "CANARY-a9f3e1c7-do-not-leak"
NODES = 3


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, tiny_model_dir):
    base = tmp_path_factory.mktemp("deploy")
    records = generate_triage(60 * (NODES + 1), seed=3)
    first = records[0]
    records[0] = dataclasses.replace(first, messages=tuple(
        {**m, "content": m["content"] + f" Patient ref {CANARY}."} if m["role"] == "user" else m
        for m in first.messages))
    # the last node is never admitted; 6 held-out records each: a tiny test federation
    d = start_deployment(base, [records[60 * i: 60 * (i + 1)] for i in range(NODES + 1)], unadmitted=1)
    try:
        assert CANARY in (d.nodes[0] / "records.jsonl").read_text()  # the canary is really in node 0's data
        results = base / "results"
        run_config = base / "run-config.toml"
        write_run_config({
            "output.dir": str(results), "model.name": str(tiny_model_dir), "model.precision": "fp32",
            "lora.r": 4, "lora.alpha": 8.0, "train.batch-size": 4, "train.local-steps": 2,
            "federation.rounds": 2, "federation.min-nodes": NODES, "federation.node-wait-timeout": 120.0,
            "privacy.enabled": True, "secagg.enabled": True, "secagg.stage-timeout": 120.0,
            # these files declare no label set, so answers are generated, and the random tiny model never
            # ends one: 8 tokens per answer, not 64
            "train.eval-max-new-tokens": 8,
        }, run_config)
        submit = d.submit(run_config)
        yield {"base": base, "coord": d.coordinator, "results": results, "nodes": d.nodes, "rogue": d.supernodes[-1],
               "submit": submit, "env": d.env, "coord_log": d.superlink_log, "approved": d.approved, "deployment": d}
    finally:
        d.stop()
        assert not d.processes.alive_groups(), "a started process (or one it spawned) survived"


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


def test_each_node_runs_every_message_of_the_run_in_one_warm_clientapp_process(deployment):
    """start-supernode.sh's default: the app guard hands every approved task to one runner process per app, so
    the model is loaded once per node, not once per message (2 rounds: train, 4 SecAgg+ stages, evaluate)."""
    for node in deployment["nodes"][:NODES]:
        log = (node / "supernode.out").read_text()
        claimed = log.count(": claimed (type flwr-clientapp")
        assert claimed >= 13 and log.count("_warm process") == 1 and "_clientapp process" not in log, log[-2000:]


def test_each_nodes_supernode_runs_at_fedtunes_pace_not_flowers_fixed_three_seconds(deployment):
    """start-supernode.sh runs flower-supernode through supernode_pace.py, which found Flower's loop it paces."""
    for node in deployment["nodes"][:NODES]:
        log = (node / "supernode.out").read_text()
        assert "SuperNode paced: re-asks for work 0.2 s after an empty ask" in log, log[-2000:]
        assert "Flower's own pace" not in log


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
    write_run_config({**flat, "federation.rounds": 3, "output.resume": True}, resumed)
    submit = deployment["deployment"].submit(resumed)
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
    submit = deployment["deployment"].submit(config, timeout=600, env={**deployment["env"], "FEDTUNE_REPO": str(app)})
    assert not marker.exists(), "the modified ClientApp ran on a node"
    metrics = read_metrics(tmp_path / "results" / "metrics.jsonl")
    errors = [n.get("error", "") for m in metrics for n in m["nodes"].values()]
    assert errors and all("is not approved by this node's operator" in e for e in errors), errors
    assert all(m.get("aggregated", 0) == 0 for m in metrics), submit.stdout[-2000:]
    for node in deployment["nodes"][:NODES]:
        assert "REFUSED" in (node / "supernode.out").read_text()
