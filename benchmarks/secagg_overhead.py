"""Secure-aggregation overhead: round time and bytes per node, side by side in one invocation.

Same workload for every configuration — the quickstart preset (default model SmolLM2-135M,
DP-SGD on) with 8 simulated nodes, each a full Flower simulation (``flwr run``) from scratch:

  1. fedtune SecAgg+              (secagg.enabled=true, the default)
  2. no secure aggregation       (secagg.enabled=false: deltas sent in the clear)
  3. Flower's built-in SecAgg+   (legacy API, benchmarks/flower_secaggplus_app.py, same local work)

    python benchmarks/secagg_overhead.py [--nodes 8] [--rounds 1] [--out DIR] [--set KEY=VALUE ...]

Round time = wall time of a round's training phase on the server (train messages out → aggregate
ready: local training, key exchange, masking, unmasking), averaged over rounds; "node training" is
the sum of the nodes' own training seconds in it (under DP, Poisson batch sizes vary from run to
run, so compare "rest of the round" for the protocol's cost). Bytes = what each
node sends in that phase (payload bytes of its replies as Flower counts them), mean over nodes.
The full model is the base model's parameter count × 4 bytes (fp32, as loaded).  Last line:
``secagg_time_ratio=X bytes_fraction_of_model=Y bytes_vs_flower_secaggplus=Z``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from fedtune.common.config import load_preset  # noqa: E402
from fedtune.lab.simulation import APP_DIR, read_metrics, run_simulation_config  # noqa: E402


def flower_app_dir(tmp: Path) -> Path:
    """A Flower app folder for the built-in SecAgg+ run: fedtune's pyproject (same config keys) with
    the comparison app's components."""
    app = tmp / "flower-secaggplus-app"
    app.mkdir()
    text = (APP_DIR / "pyproject.toml").read_text(encoding="utf-8")
    text = text.replace('serverapp = "fedtune.coordinator.server_app:app"', 'serverapp = "flower_secaggplus_app:server_app"')
    text = text.replace('clientapp = "fedtune.node.client_app:app"', 'clientapp = "flower_secaggplus_app:client_app"')
    (app / "pyproject.toml").write_text(text, encoding="utf-8")
    shutil.copy(HERE / "flower_secaggplus_app.py", app)
    return app


def fedtune_numbers(out: Path) -> tuple[list[float], float, list[float]]:
    rounds = [m for m in read_metrics(out / "metrics.jsonl") if m["round"] > 0]
    for m in rounds:
        if m.get("aggregation") != "fedavg":
            raise SystemExit(f"{out}: round {m['round']} was not aggregated ({m.get('aggregation')})")
    per_node = [n["bytes_sent"] for m in rounds for n in m["nodes"].values() if n.get("status") == "ok"]
    training = [sum(n.get("train_seconds", 0.0) for n in m["nodes"].values()) for m in rounds]
    return [m["train_phase_seconds"] for m in rounds], statistics.mean(per_node), training


def flower_numbers(out: Path) -> tuple[list[float], float, list[float]]:
    rounds = read_metrics(out / "metrics.jsonl")
    sent: dict[tuple[str, str], int] = {}
    training: dict[str, float] = {}
    for path in out.glob("flower-node-*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            if "bytes" in rec:
                sent[(path.stem, rec["round"])] = sent.get((path.stem, rec["round"]), 0) + rec["bytes"]
            else:
                training[rec["round"]] = training.get(rec["round"], 0.0) + rec["train_seconds"]
    return [m["train_phase_seconds"] for m in rounds], statistics.mean(sent.values()), list(training.values())


def full_model_bytes(cfg) -> int:
    from fedtune.common.model import load_base_model

    return int(sum(p.numel() for p in load_base_model(cfg.model).parameters()) * 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default=str(APP_DIR / "simulations" / "quickstart.toml"))
    ap.add_argument("--nodes", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--out", default=None, help="results folder (default: a temporary one)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra preset overrides")
    args = ap.parse_args()
    base = [f"simulation.nodes={args.nodes}", f"federation.min-nodes={args.nodes}",
            f"federation.rounds={args.rounds}", *args.set]
    tmp = Path(tempfile.mkdtemp(prefix="secagg-bench-"))
    root = Path(args.out).resolve() if args.out else tmp
    configs = [
        ("fedtune SecAgg+", ["secagg.enabled=true"], APP_DIR, fedtune_numbers),
        ("no secure aggregation", ["secagg.enabled=false"], APP_DIR, fedtune_numbers),
        ("Flower built-in SecAgg+", ["secagg.enabled=true"], flower_app_dir(tmp), flower_numbers),
    ]
    rows = []
    for i, (name, extra, app_dir, numbers) in enumerate(configs):
        cfg, info = load_preset(args.preset, base + extra)
        out = root / f"{i + 1}-{name.lower().replace(' ', '-').replace('+', 'plus')}"
        print(f"[{i + 1}/{len(configs)}] {name}: {args.nodes} nodes, {args.rounds} round(s) -> {out}", flush=True)
        run_simulation_config(cfg, info, out, quiet=True, app_dir=app_dir)
        times, sent, training = numbers(out)
        rows.append((name, statistics.mean(times), sent, statistics.mean(training)))
        print(f"    round {statistics.mean(times):.1f} s (node training {statistics.mean(training):.1f} s), "
              f"{sent:,.0f} bytes per node", flush=True)
    model_bytes = full_model_bytes(load_preset(args.preset, base)[0])

    print(f"\nworkload: {Path(args.preset).name}, {args.nodes} nodes, {args.rounds} round(s); "
          f"full model {model_bytes:,} bytes (fp32)")
    print("| configuration | round wall time (s) | of which node training (s) | rest of the round (s) "
          "| bytes sent per node | vs full model |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, t, b, tr in rows:
        print(f"| {name} | {t:.1f} | {tr:.1f} | {t - tr:.1f} | {b:,.0f} | {100 * b / model_bytes:.3f}% |")
    ours, plain, flower = rows
    print(f"secagg_time_ratio={ours[1] / plain[1]:.3f} bytes_fraction_of_model={ours[2] / model_bytes:.5f} "
          f"bytes_vs_flower_secaggplus={ours[2] / flower[2]:.3f}")


if __name__ == "__main__":
    main()
