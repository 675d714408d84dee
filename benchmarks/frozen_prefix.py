"""The frozen-prefix cache: one node's rounds with and without it, side by side in one run.

With ``lora.top-layers = N`` the layers below the adapter are frozen, and fedtune runs them once per
record (``fedtune/common/frozen_prefix.py``).  This replays what one quickstart node and its
evaluation do over a run - evaluate the held-out records, then per round: DP-SGD steps on the node's
records (the preset's objective, σ and expected batch), evaluate again - once with the cache and
once with every forward through all layers, on the same model and records:

    python benchmarks/frozen_prefix.py [PRESET] [--rounds 3] [--records 360] [--held-out 40]

Prints seconds per phase; the last line is ``frozen_prefix_eval_ratio=X frozen_prefix_train_ratio=Y``
(cached / full: evaluation seconds, and training seconds per sampled record, DP Poisson batches vary).
"""

from __future__ import annotations

import argparse
import time

from fedtune.common import frozen_prefix
from fedtune.common.config import load_preset
from fedtune.common.data import PromptEncoder, simulation_pool
from fedtune.common.evaluation import evaluate
from fedtune.common.model import add_lora, load_base_model, load_tokenizer
from fedtune.node.privacy import DPPlan, DPStepper, poisson_sample_rate
from fedtune.node.training import train_local


def replay(cfg, model, enc, train, held_out, labels, rounds: int) -> tuple[float, float, int]:
    """(evaluation seconds, training seconds, records sampled) of ``rounds`` rounds plus round 0's evaluation."""
    q = poisson_sample_rate(len(train), cfg.train.batch_size)
    plan = DPPlan(0.55, q, cfg.train.local_steps, cfg.privacy.max_grad_norm)  # the quickstart's paced σ, about
    eval_s = train_s = 0.0
    sampled = 0
    for rnd in range(rounds + 1):
        if rnd:
            stepper = DPStepper(model, len(train), cfg.train, plan)
            t0 = time.perf_counter()
            res = train_local(model, enc, train, cfg.train, cfg.model.precision, seed=rnd, stepper=stepper,
                              labels=labels)
            train_s, sampled = train_s + time.perf_counter() - t0, sampled + res.samples
        t0 = time.perf_counter()
        evaluate(model, enc, held_out, cfg.train.eval_batch_size, cfg.model.precision, labels)
        eval_s += time.perf_counter() - t0
        print(f"  round {rnd}: eval {eval_s:6.1f} s, train {train_s:6.1f} s ({sampled} records) so far", flush=True)
    return eval_s, train_s, sampled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("preset", nargs="?", default="simulations/quickstart.toml")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--records", type=int, default=360, help="the node's training records")
    ap.add_argument("--held-out", type=int, default=40, help="the node's held-out records")
    args = ap.parse_args()
    cfg, _ = load_preset(args.preset)
    pool, labels = simulation_pool(cfg.data)
    enc = PromptEncoder(load_tokenizer(cfg.model.name), cfg.model.max_length)
    held_out = enc.encode_all(pool[:args.held_out])
    train = enc.encode_all(pool[args.held_out:args.held_out + args.records])
    print(f"{args.preset}: lora.top-layers={cfg.lora.top_layers}, {len(train)} training and {len(held_out)} held-out "
          f"records, {args.rounds} rounds x {cfg.train.local_steps} DP steps", flush=True)
    results = {}
    for cached in (False, True):
        model = add_lora(load_base_model(cfg.model), cfg.lora, seed=0)
        if frozen_prefix.of(model) is None:
            raise SystemExit("this preset's model gets no frozen-prefix cache (lora.top-layers = 0?)")
        if not cached:
            delattr(model, frozen_prefix.ATTRIBUTE)
        print("with the cache" if cached else "every forward through all layers", flush=True)
        results[cached] = replay(cfg, model, enc, train, held_out, labels, args.rounds)
    (e0, t0, n0), (e1, t1, n1) = results[False], results[True]
    print(f"frozen_prefix_eval_ratio={e1 / e0:.3f} frozen_prefix_train_ratio={(t1 / max(n1, 1)) / (t0 / max(n0, 1)):.3f}")


if __name__ == "__main__":
    main()
