"""DP-SGD overhead on the default model: step time and peak memory with vs without DP.

Each configuration runs in its own fresh process (so peak memory is that configuration's own),
on the same realistic batch of synthetic triage records, side by side in one invocation:

    python benchmarks/dp_overhead.py [--batch-size 16] [--steps 5] [--model smollm2-135m-instruct]

Configurations: no DP and DP (Opacus hooks) at bf16 autocast, and no DP vs DP hooks and ghost
clipping at fp32 (ghost needs fp32 norms), and DP hooks at fp32 with ``model.gradient-checkpointing``. The bf16 rows run only where this machine computes bf16
natively (``model.precision = auto`` would pick it); elsewhere bf16 is emulated, ~100x slower, and
no node would use it. The last line is ``dp_time_ratio=X dp_peak_memory_ratio=Y`` for the default
(hooks, at the precision ``auto`` picks here) against no DP at that precision.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

CONFIGS = [  # label, clipping mode (none = no DP), precision, model.gradient-checkpointing
    ("no DP, bf16", "none", "bf16", False),
    ("DP hooks, bf16", "hooks", "bf16", False),
    ("no DP, fp32", "none", "fp32", False),
    ("DP hooks, fp32", "hooks", "fp32", False),
    ("DP ghost, fp32", "ghost", "fp32", False),
    ("DP hooks, fp32, checkpointed", "hooks", "fp32", True),
]


def worker(mode: str, precision: str, args) -> dict:
    import torch

    from fedtune.common.config import RunConfig, TrainConfig
    from fedtune.common.data import PromptEncoder, generate_triage
    from fedtune.common.model import add_lora, load_base_model, load_tokenizer, model_device
    from fedtune.common.objective import per_sample_forward
    from fedtune.node.privacy import DPPlan, DPStepper
    from fedtune.node.training import PlainStepper

    cfg = RunConfig.from_flat({"model.name": args.model, "model.precision": precision})
    tok = load_tokenizer(cfg.model.name)
    model = add_lora(load_base_model(cfg.model), cfg.lora, seed=0, gradient_checkpointing=args.checkpointing)
    enc = PromptEncoder(tok, cfg.model.max_length)
    batch = enc.collate(enc.encode_all(generate_triage(args.batch_size, seed=0))).to(model_device(model))
    train = TrainConfig(batch_size=args.batch_size)
    n = 10 * args.batch_size
    stepper = PlainStepper(model, n, train, 0) if mode == "none" else DPStepper(
        model, n, train, DPPlan(1.0, args.batch_size / n, args.steps, 1.0), mode)
    model.train()
    times = []
    for i in range(args.steps + 1):  # first step is warm-up
        t = time.perf_counter()
        stepper.step(per_sample_forward(model, batch, precision).losses)
        if i:
            times.append(time.perf_counter() - t)
    stepper.close()
    return {"step_seconds": statistics.median(times), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "tokens": int(batch.attention_mask.sum())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--only", help="run only the configurations whose label contains this text (e.g. fp32)")
    p.add_argument("--worker", nargs=2, metavar=("MODE", "PRECISION"), help=argparse.SUPPRESS)
    p.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args)))
        return
    from fedtune.common.model import compute_precision, device

    default = compute_precision("auto", device().type)
    configs = [c for c in CONFIGS if (c[2] == "fp32" or default == "bf16") and (args.only or "") in c[0]]
    if default != "bf16":
        print("bf16 rows skipped: this machine emulates bf16 (model.precision = auto runs fp32 here)", file=sys.stderr)
    results = {}
    for label, mode, precision, checkpointing in configs:
        out = subprocess.run(
            [sys.executable, __file__, "--worker", mode, precision, "--batch-size", str(args.batch_size),
             "--steps", str(args.steps), "--model", args.model] + ["--checkpointing"] * checkpointing,
            capture_output=True, text=True, check=True,
        )
        results[label] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{label:28s} step {results[label]['step_seconds']:.2f}s  peak RSS {results[label]['peak_rss_mb']:.0f} MB",
              file=sys.stderr, flush=True)
    base = results[f"no DP, {default}"]
    print(f"\nmodel {args.model}, batch {args.batch_size} records ({base['tokens']} tokens), median of {args.steps} steps\n")
    print("| configuration | step time (s) | × no-DP (same precision) | peak RSS (MB) | × no-DP |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, _, precision, _ in configs:
        r, ref = results[label], results[f"no DP, {precision}"]
        print(f"| {label} | {r['step_seconds']:.2f} | {r['step_seconds'] / ref['step_seconds']:.2f} | "
              f"{r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] / ref['peak_rss_mb']:.2f} |")
    dp = results[f"DP hooks, {default}"]
    print(f"\ndp_time_ratio={dp['step_seconds'] / base['step_seconds']:.3f} "
          f"dp_peak_memory_ratio={dp['peak_rss_mb'] / base['peak_rss_mb']:.3f}")


if __name__ == "__main__":
    main()
