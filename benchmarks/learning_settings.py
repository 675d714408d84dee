"""One federated run of a preset with ``--set`` overrides, in-process, for comparing learning settings.

The real ServerApp loop (``run_federation``) and the real ClientApp handlers, connected by the
in-process grid of the tests (``tests/loopback.py``) instead of Flower's scheduler and Ray: the
same rounds, DP-SGD, SecAgg+ and evaluation as ``fedtune simulate``, without its start-up cost,
so settings can be compared run after run on a small machine:

    python benchmarks/learning_settings.py simulations/quickstart.toml --out /tmp/run --set train.lr=0.05

Prints one line per round (held-out accuracy, pooled loss, largest ε, σ per node, node training
seconds, round seconds) and ``final_accuracy=X seconds=Y``.  DP runs of one setting differ from
run to run (fresh OS noise): compare several runs, not one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fedtune.common.config import load_preset  # noqa: E402
from fedtune.coordinator.report import read_metrics  # noqa: E402
from fedtune.coordinator.server_app import run_federation  # noqa: E402
from loopback import LoopbackGrid  # noqa: E402


def round_line(record: dict) -> str:
    nodes = record.get("nodes", {}).values()
    eps = [n["epsilon"] for n in nodes if n.get("epsilon") is not None]
    sigma = sorted(round(n["noise_multiplier"], 3) for n in nodes if n.get("noise_multiplier"))
    train = sum(n.get("train_seconds", 0.0) for n in nodes)
    return (f"round {record['round']}: accuracy {record['eval_accuracy']:.1%} loss {record['eval_loss']:.3f} "
            f"max ε {max(eps) if eps else 0:.3f} σ {sigma or '-'} node training {train:.0f}s "
            f"round {record.get('seconds', 0):.0f}s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("preset")
    p.add_argument("--out", required=True, help="results folder (must not hold a run)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    out = Path(args.out).resolve()
    cfg, info = load_preset(args.preset, args.set + [f"output.dir={json.dumps(str(out))}"])
    start = time.monotonic()
    run_federation(LoopbackGrid(info.num_nodes, cfg.to_flat()), cfg, out, run_id=7)
    seconds = time.monotonic() - start
    records = read_metrics(out / "metrics.jsonl")
    for record in records:
        print(round_line(record))
    print(f"final_accuracy={records[-1]['eval_accuracy']:.4f} seconds={seconds:.0f}")


if __name__ == "__main__":
    main()
