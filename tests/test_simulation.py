"""End to end through Flower's Simulation Runtime (``flwr run`` + managed local SuperLink + Ray).

One shared run (``tiny_run``) serves most tests: starting Flower costs tens of seconds each time."""

import json
import subprocess
from pathlib import Path

import pytest

from fedtune.cli import main as cli_main
from fedtune.coordinator.report import read_metrics
from fedtune.lab.simulation import simulate

pytestmark = pytest.mark.simulation


MOMENTS_SPY_APP = '''"""fedtune's ClientApp, noting at each train message the AdamW moments the node finds in its Context.state."""
import json

from flwr.clientapp import ClientApp

from fedtune.node import optimizer_state
from fedtune.node.client_app import app as fedtune_app


class MomentsSpy(ClientApp):
    def __call__(self, message, context):
        if message.metadata.message_type == "train":
            moments = optimizer_state.load(context.state) or {{}}
            steps = sorted({{float(v[0]) for k, v in moments.items() if k.endswith("/step")}})
            with open({log!r}, "a") as f:
                f.write(json.dumps([int(context.node_config["partition-id"]), steps]) + "\\n")
        return fedtune_app(message, context)


app = MomentsSpy()
'''


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory):
    """3 nodes, 2 rounds, DP and SecAgg+ on (the defaults), carried optimizer moments. The ClientApp is
    fedtune's behind a spy that only notes which moments each node finds at each train message."""
    from fedtune.common.config import load_preset
    from fedtune.lab.simulation import run_simulation_config

    folder = tmp_path_factory.mktemp("sim")
    cfg, info = load_preset(None, [
        f"model.name={json.dumps(str(tiny_model_dir))}", "model.precision=fp32", "lora.r=4", "data.records=120",
        "train.local-steps=3", "train.batch-size=4", "train.lr=0.01", "train.carry-optimizer-state=true",
        "federation.rounds=2", "federation.min-nodes=3", "simulation.nodes=3", "simulation.cpus-per-node=1"])
    app = _wrapped_app(folder / "app", "moments_spy", MOMENTS_SPY_APP.format(log=str(folder / "moments.jsonl")))
    return run_simulation_config(cfg, info, folder / "run", quiet=True, app_dir=app)


def test_rounds_are_recorded_from_round_zero(tiny_run):
    metrics = read_metrics(tiny_run.out / "metrics.jsonl")
    assert [m["round"] for m in metrics] == [0, 1, 2]
    for m in metrics:
        assert {"round", "eval_accuracy", "eval_loss", "seconds", "nodes"} <= set(m)
        assert len(m["nodes"]) == 3 and all(n["status"] == "ok" for n in m["nodes"].values())
    for m in metrics[1:]:
        assert m["aggregated"] == 3
        for node in m["nodes"].values():
            assert {"examples", "bytes_sent", "eval_accuracy", "name", "epsilon"} <= set(node)
            assert "train_loss" not in node  # a DP node never sends the loss of a private batch
            assert node["name"].startswith("hospital-")
    # Training moved the held-out loss (the tiny model starts far from the targets).
    assert metrics[-1]["eval_loss"] < metrics[0]["eval_loss"]


def test_rounds_run_under_secure_aggregation_and_nodes_send_only_a_masked_lora_delta(tiny_run, tiny_peft):
    """SecAgg+ is on by default: each node sends two public keys, encrypted key shares, one uint32
    vector the size of the LoRA adapter (+1 word for its weight) and its metrics — never base weights."""
    model, _, _ = tiny_peft
    adapter_values = sum(p.numel() for p in model.parameters() if p.requires_grad)
    base_bytes = sum(p.numel() * 4 for p in model.parameters() if not p.requires_grad)
    for record in read_metrics(tiny_run.out / "metrics.jsonl")[1:]:
        assert record["secure_aggregation"] is True and record["dropped_nodes"] == []
        assert record["aggregated"] == 3 and record["secagg"]["threshold"] == 2
        for node in record["nodes"].values():
            assert 4 * (adapter_values + 1) <= node["bytes_sent"] <= 4 * (adapter_values + 1) + 4096
            assert node["bytes_sent"] < base_bytes / 10


def test_results_folder_report_and_adapter(tiny_run, tiny_cfg):
    from peft import PeftModel

    from fedtune.common.model import load_base_model

    out = tiny_run.out
    report = (out / "report.md").read_text()
    assert "| round | eval accuracy" in report and "PeftModel.from_pretrained" in report
    model = PeftModel.from_pretrained(load_base_model(tiny_cfg.model), str(out / "adapter"))
    lora = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora and any(p.abs().sum() > 0 for p in lora)  # the trained adapter, not the zero init
    assert json.loads((out / "adapter" / "fedtune.json").read_text())["model.name"] == tiny_cfg.model.name


def test_dp_is_on_by_default_and_epsilon_matches_each_node_ledger(tiny_run):
    from fedtune.node.privacy.accounting import epsilon

    last = read_metrics(tiny_run.out / "metrics.jsonl")[-1]
    ledgers = {p.parent.name: json.loads(p.read_text()) for p in (tiny_run.out / "node-state").rglob("privacy-ledger-*.json")}
    assert len(ledgers) == 3
    for node in last["nodes"].values():
        ledger = ledgers[node["name"]]
        assert node["delta"] == ledger["delta"] < 1 / node["num_records"]
        assert node["epsilon"] == pytest.approx(epsilon(ledger["history"], ledger["delta"], ledger["accountant"]), abs=1e-9)
        assert 0 < node["epsilon"] <= 8.0 and len(ledger["rounds"]) == 2
    assert "## Privacy (record-level DP-SGD per node)" in (tiny_run.out / "report.md").read_text()


def test_nodes_stop_at_their_budget_and_the_run_ends_cleanly_when_none_may_train(tiny_model_dir, tmp_path, capsys):
    """IID split (34 records each), σ = 1, 3 steps a round, RDP: ε ≈ 1.32 after 1 round and ≈ 1.63 after 2,
    so with a budget of 1.45 every node trains in round 1 and declines in round 2; with no node left
    that may train, the run ends there - a normal end with its report and adapter, not a failure."""
    result = simulate(
        None,
        [f"model.name={json.dumps(str(tiny_model_dir))}", "model.precision=fp32", "lora.r=4", "data.records=120",
         "data.partition=iid", "train.local-steps=3", "train.batch-size=4", "federation.rounds=3",
         "federation.min-nodes=3", "simulation.nodes=3", "simulation.cpus-per-node=1",
         "privacy.noise-multiplier=1.0", "privacy.simulated-max-epsilon=1.45", "privacy.accountant=rdp"],
        tmp_path / "run", quiet=True,
    )
    metrics = read_metrics(result.out / "metrics.jsonl")
    assert [m["round"] for m in metrics] == [0, 1]
    assert {n["status"] for n in metrics[1]["nodes"].values()} == {"ok"}
    assert all(n["epsilon"] <= 1.45 for n in metrics[1]["nodes"].values())
    assert result.stopped["kind"] == "budget" and result.stopped["round"] == 2
    assert "privacy budget is spent" in result.stopped["reason"]
    report = (result.out / "report.md").read_text()
    assert "The run stopped at round 2" in report and "--resume" not in report
    assert (result.out / "adapter" / "adapter_config.json").is_file()
    assert cli_main(["privacy", "show", "--state", str(result.out / "node-state")]) == 0
    shown = capsys.readouterr().out
    assert shown.count("privacy-ledger-") == 3 and "ε spent" in shown


def test_superlink_is_stopped_after_the_run(tiny_run):
    out = subprocess.run(["pgrep", "-f", f"flower-superlink.*{tiny_run.out}"], capture_output=True, text=True)
    assert out.stdout.strip() == ""


def test_generate_cli_answers_with_the_adapter_not_the_base_model(tiny_run, capsys, tmp_path):
    """The same exported adapter folder with LoRA B zeroed (= the base model) and with B set large:
    the CLI's answers differ, so it really applies the adapter's weights."""
    import shutil

    from safetensors.torch import load_file, save_file

    def variant(name: str, value: float) -> Path:
        folder = tmp_path / name
        shutil.copytree(tiny_run.out / "adapter", folder)
        weights = load_file(folder / "adapter_model.safetensors")
        save_file({k: (v * 0 + value if "lora_B" in k else v) for k, v in weights.items()},
                  folder / "adapter_model.safetensors")
        return folder

    answers = {}
    for name, value in (("base", 0.0), ("strong", 0.5)):
        assert cli_main(["generate", "--adapter", str(variant(name, value)), "--max-new-tokens", "8", "hello"]) == 0
        answers[name] = capsys.readouterr().out.strip()
    assert answers["base"] and answers["strong"] and answers["base"] != answers["strong"]


def test_bad_preset_fails_before_starting_flower(tmp_path, capsys):
    code = cli_main(["simulate", "--set", "train.lr=-1", "--out", str(tmp_path / "x")])
    assert code == 2 and "train.lr must be > 0" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


DROPPING_APP = '''"""fedtune's ClientApp, except that chosen partitions crash at one SecAgg+ stage (a node lost mid-protocol)."""
from flwr.clientapp import ClientApp

from fedtune.node.client_app import app as fedtune_app

DROP = {drop!r}  # partition id -> the message type at which that node dies


class DroppingClientApp(ClientApp):
    def __call__(self, message, context):
        if DROP.get(int(context.node_config["partition-id"])) == message.metadata.message_type:
            raise RuntimeError("node lost mid-protocol (test)")
        return fedtune_app(message, context)


app = DroppingClientApp()
'''


def _wrapped_app(folder: Path, module: str, source: str) -> Path:
    """A Flower app folder: fedtune's pyproject with the ClientApp ``module:app`` written from ``source``."""
    from fedtune.lab.simulation import APP_DIR

    folder.mkdir()
    text = (APP_DIR / "pyproject.toml").read_text(encoding="utf-8")
    (folder / "pyproject.toml").write_text(
        text.replace('clientapp = "fedtune.node.client_app:app"', f'clientapp = "{module}:app"'), encoding="utf-8")
    (folder / f"{module}.py").write_text(source, encoding="utf-8")
    return folder


def _dropping_app(folder: Path, drop: dict[int, str]) -> Path:
    """A Flower app folder whose ClientApp loses the chosen nodes."""
    return _wrapped_app(folder, "dropping_app", DROPPING_APP.format(drop=drop))


def test_in_a_flower_simulation_each_node_finds_its_round_one_moments_in_round_two(tiny_run):
    """Flower's Simulation Runtime keeps each node's Context.state between rounds: carried moments arrive."""
    seen = [json.loads(line) for line in (tiny_run.out.parent / "moments.jsonl").read_text().splitlines()]
    assert sorted(p for p, _ in seen[:3]) == [0, 1, 2] and all(steps == [] for _, steps in seen[:3])
    assert sorted(p for p, _ in seen[3:]) == [0, 1, 2] and all(steps == [3.0] for _, steps in seen[3:])


def test_real_nodes_lost_mid_protocol_in_a_flower_simulation_and_the_round_completes(tiny_model_dir, tmp_path):
    from fedtune.common.config import load_preset
    from fedtune.lab.simulation import run_simulation_config

    # 7 nodes: 6 neighbours each, threshold 4, so 2 may drop. One node dies after sharing its keys
    # (not a survivor: the pairwise masks it shares with the others are rebuilt from its key shares),
    # one after sending its masked vector (a survivor: its self mask is removed with shares of b).
    drop = {1: "train.secagg_mask", 3: "train.secagg_unmask"}
    cfg, info = load_preset(None, [
        f"model.name={json.dumps(str(tiny_model_dir))}", "model.precision=fp32", "lora.r=4", "data.records=210",
        "train.local-steps=1", "train.batch-size=4", "federation.rounds=1", "federation.min-nodes=3",
        "simulation.nodes=7", "simulation.cpus-per-node=1"])
    out = tmp_path / "run"
    run_simulation_config(cfg, info, out, quiet=True, app_dir=_dropping_app(tmp_path / "app", drop))
    m = read_metrics(out / "metrics.jsonl")[1]
    by_name = {n["name"]: (nid, n) for nid, n in m["nodes"].items()}
    assert m["aggregation"] == "fedavg" and m["aggregated"] == 6, m
    assert m["dropped_nodes"] == [by_name["hospital-1"][0]]
    assert "train.secagg_mask" in by_name["hospital-1"][1]["error"]
    assert "train.secagg_unmask" in by_name["hospital-3"][1]["error"]
    assert all(by_name[f"hospital-{i}"][1]["status"] == "ok" for i in (0, 2, 4, 5, 6))
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


@pytest.fixture
def two_node_ray_cluster():
    """A Ray cluster of two nodes (1 CPU each) started on this machine with Ray's own CLI, as a user
    starts one across machines; stopped afterwards."""
    import os
    import sys
    import tempfile

    from fedtune.lab.simulation import free_port

    ray = str(Path(sys.executable).parent / "ray")
    port, temp = free_port(), tempfile.mkdtemp(prefix="rc-", dir="/tmp")  # short: Ray's socket paths are limited
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    try:
        for args in (["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}"],
                     [f"--address=127.0.0.1:{port}"]):
            started = subprocess.run([ray, "start", *args, *common], env=env, capture_output=True, text=True,
                                     timeout=180)
            assert started.returncode == 0, started.stdout + started.stderr
        yield f"127.0.0.1:{port}", Path(temp)
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_a_simulation_runs_on_an_existing_two_node_ray_cluster(tiny_model_dir, tmp_path, two_node_ray_cluster):
    """simulation.ray-address: Flower's Simulation Runtime joins the running cluster (its nodes run as
    Ray actors there) instead of starting a Ray of its own; 3 simulated nodes, DP and SecAgg+, complete."""
    import sys

    address, temp = two_node_ray_cluster
    alive = subprocess.run([sys.executable, "-c", "import ray; ray.init(address=%r, logging_level='ERROR'); "
                            "print(sum(n['Alive'] for n in ray.nodes()))" % address],
                           capture_output=True, text=True, timeout=120)
    assert alive.stdout.strip().splitlines()[-1] == "2", alive.stderr
    result = simulate(None, [
        f"model.name={json.dumps(str(tiny_model_dir))}", "model.precision=fp32", "lora.r=4", "data.records=120",
        "train.local-steps=2", "train.batch-size=4", "federation.rounds=1", "federation.min-nodes=3",
        "simulation.nodes=3", "simulation.cpus-per-node=1", f"simulation.ray-address={address}",
        "privacy.noise-multiplier=1.0"], tmp_path / "run", quiet=True)
    metrics = read_metrics(result.out / "metrics.jsonl")
    assert [m["round"] for m in metrics] == [0, 1] and metrics[1]["aggregation"] == "fedavg"
    logs = [p for p in (temp / "session_latest" / "logs").glob("*") if p.is_file()]
    assert any("ClientAppActor" in p.read_text(errors="replace") for p in logs)  # the nodes ran on the cluster


def test_a_ray_address_without_cpus_per_node_is_refused_with_the_fix(tmp_path, capsys):
    code = cli_main(["simulate", "--set", "simulation.ray-address=10.0.0.5:6379", "--out", str(tmp_path / "x")])
    assert code == 2 and "needs simulation.cpus-per-node" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
