"""What a deployed round costs beyond the nodes' own work, against the same run in simulation.

A SuperLink and 3 SuperNodes on loopback (TLS, node authentication, roster and app pinning: the
operator scripts, as in ``tests/test_deployment.py``) run 2 rounds of the packaged model with DP-SGD
and SecAgg+, first with a fresh ClientApp process per message (``FEDTUNE_WARM_IDLE_EXIT=0``), then
with warm nodes (the default: one process per node and app keeps the model); then Flower's
Simulation Runtime runs the same settings with 3 simulated nodes:

    python benchmarks/deploy_overhead.py [--out DIR] [--records-per-node 120] [--local-steps 2] [--batch-size 8] [--no-cold]

Per round it prints the wall time (the coordinator's round, training + SecAgg+ + evaluation), the
nodes' own training and evaluation seconds (their training loop and their evaluation, as each node
reports them) and the rest: process start, imports, model and data loading, σ planning, messaging
and the SecAgg+ stages.  Deployed SuperNodes work at the same time, so the nodes' part of a deployed
round is the slowest node's training plus the slowest node's evaluation; the simulation runs its
nodes one after another (one Ray actor with every core), so there it is the sum over nodes.  The
last line is ``cold_deploy_overhead_seconds_per_round=Z deploy_overhead_seconds_per_round=X
simulation_overhead_seconds_per_round=Y`` (X: warm nodes), the rest per training round (rounds 1 and
2) averaged.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fedtune.common.data import DEPARTMENTS, generate_triage
from fedtune.lab.local_deployment import start_deployment
from fedtune.lab.simulation import read_metrics, write_run_config

NODES = 3


def settings(args) -> dict:
    """The run both runtimes execute: the packaged model, quickstart-style LoRA, DP and SecAgg+, 2 rounds."""
    return {"model.name": "smollm2-135m-instruct", "lora.top-layers": 8, "lora.freeze-a": True,
            "train.local-steps": args.local_steps, "train.batch-size": args.batch_size, "federation.rounds": 2,
            "federation.min-nodes": NODES, "privacy.enabled": True, "privacy.target-epsilon": 8.0,
            "secagg.enabled": True, "data.labels": ",".join(DEPARTMENTS)}


def deployed(base: Path, args, warm: bool) -> list[dict]:
    records = generate_triage(NODES * args.records_per_node, seed=11)
    n = args.records_per_node
    d = start_deployment(base, [records[i * n:(i + 1) * n] for i in range(NODES)],
                         node_env={} if warm else {"FEDTUNE_WARM_IDLE_EXIT": "0"})
    try:
        config = base / "run-config.toml"
        write_run_config({**settings(args), "output.dir": str(base / "results"), "federation.node-wait-timeout": 300.0,
                          "secagg.stage-timeout": 300.0}, config)
        submit = d.submit(config, timeout=1800)
        if submit.returncode != 0:
            raise SystemExit(f"the deployed run failed:\n{submit.stdout[-3000:]}\n{submit.stderr[-2000:]}")
    finally:
        d.stop()
    return read_metrics(base / "results" / "metrics.jsonl")


def simulated(base: Path, args) -> list[dict]:
    values = {**settings(args), "data.source": "synthetic-triage", "data.records": NODES * args.records_per_node,
              "data.partition": "iid"}
    preset = base / "preset.toml"
    preset.write_text(f"[simulation]\nnodes = {NODES}\n")
    cmd = [sys.executable, "-m", "fedtune.cli", "simulate", str(preset), "--out", str(base / "results"), "--quiet",
           *[a for k, v in values.items() for a in ("--set", f"{k}={str(v).lower() if isinstance(v, bool) else v}")]]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if res.returncode != 0:
        raise SystemExit(f"the simulation failed:\n{res.stdout[-3000:]}\n{res.stderr[-2000:]}")
    return read_metrics(base / "results" / "metrics.jsonl")


def split(record: dict, concurrent: bool) -> tuple[float, float, float, float]:
    """(wall, nodes' training, nodes' evaluation, rest) of one round, seconds."""
    nodes = [n for n in record.get("nodes", {}).values() if n.get("status") == "ok"]

    def part(key: str) -> float:
        values = [n.get(key, 0.0) for n in nodes]
        return max(values, default=0.0) if concurrent else sum(values)

    train, evaluate = part("train_seconds"), part("eval_seconds")
    return record["seconds"], train, evaluate, record["seconds"] - train - evaluate


def report(name: str, metrics: list[dict], concurrent: bool) -> float:
    """Print the rounds of one runtime; return its mean rest per training round."""
    print(f"\n{name}: round | wall s | nodes' training s | nodes' evaluation s | rest s | accuracy")
    rests = []
    for m in metrics:
        wall, train, evaluate, rest = split(m, concurrent)
        acc = m.get("eval_accuracy")
        print(f"  {m['round']} | {wall:.1f} | {train:.1f} | {evaluate:.1f} | {rest:.1f} | "
              f"{'n/a' if acc is None else f'{100 * acc:.1f}%'}")
        if m["round"] > 0:
            rests.append(rest)
    return sum(rests) / len(rests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--records-per-node", type=int, default=120)
    parser.add_argument("--local-steps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-cold", action="store_true", help="skip the deployment with a fresh process per message")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = args.out or Path(tmp)
        rests = {}
        runs = [("warm", "deployment, warm nodes (3 SuperNodes, TLS, authentication; one ClientApp process per "
                 "node keeps the model)", lambda b: deployed(b, args, warm=True), True),
                ("simulated", "simulation (3 nodes, one Ray actor)", lambda b: simulated(b, args), False)]
        if not args.no_cold:
            runs.insert(0, ("cold", "deployment, cold nodes (FEDTUNE_WARM_IDLE_EXIT=0: a fresh ClientApp process "
                            "per message)", lambda b: deployed(b, args, warm=False), True))
        for key, title, run, concurrent in runs:
            (base / key).mkdir(parents=True, exist_ok=True)
            t = time.monotonic()
            rests[key] = report(title, run(base / key), concurrent)
            print(f"  ({time.monotonic() - t:.0f} s with setup)")
    cold = f"cold_deploy_overhead_seconds_per_round={rests['cold']:.2f} " if "cold" in rests else ""
    print(f"{cold}deploy_overhead_seconds_per_round={rests['warm']:.2f} "
          f"simulation_overhead_seconds_per_round={rests['simulated']:.2f}")

if __name__ == "__main__":
    main()
