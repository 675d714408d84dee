"""What a checkpoint costs per round, on the default model, side by side in one run:

    python benchmarks/checkpoint_cost.py [--model smollm2-135m-instruct] [--rounds 20] [--nodes 8] [--repeat 5]

Measures, on the adapter of the given model with the preset's LoRA settings: the checkpoint file's
size; the median time to save it atomically (temp file + fsync + rename) with the metrics of
``--rounds`` rounds of ``--nodes`` nodes, and to load and verify it; the time to export the same
adapter as a PEFT folder (done once per run anyway); and one optimiser step of local training on
a batch of 32 records (no DP - the cheapest thing a round does many times).  The last line is
``checkpoint_save_vs_train_step=X checkpoint_save_vs_peft_export=Y checkpoint_bytes_vs_adapter_bytes=Z``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def _median_seconds(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--preset", default=str(Path(__file__).resolve().parent.parent / "simulations" / "quickstart.toml"))
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--nodes", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a preset value")
    args = ap.parse_args()

    from fedtune.common.adapters import export_adapter, get_adapter_arrays
    from fedtune.common.config import load_preset
    from fedtune.common.data import PromptEncoder, generate_triage
    from fedtune.common.model import add_lora, load_base_model, load_tokenizer
    from fedtune.common.objective import per_sample_forward
    from fedtune.coordinator.checkpoint import Checkpoint, checkpoint_path, load_checkpoint, save_checkpoint
    from fedtune.node.training import PlainStepper

    cfg, _ = load_preset(args.preset, [f"model.name={args.model!r}".replace("'", '"'), *args.set])
    tok = load_tokenizer(cfg.model.name)
    model = add_lora(load_base_model(cfg.model), cfg.lora, seed=0)
    adapter = get_adapter_arrays(model)
    adapter_bytes = sum(a.nbytes for a in adapter.values())
    node = {"name": "hospital-0", "status": "ok", "train_loss": 1.234, "examples": 400, "steps": 3, "epsilon": 3.21,
            "delta": 2.5e-4, "bytes_sent": 922531, "eval_accuracy": 0.5, "eval_loss": 0.9, "eval_examples": 40}
    records = [{"round": r, "eval_accuracy": 0.5, "eval_loss": 0.9, "seconds": 120.0,
                "nodes": {str(10**18 + i): dict(node) for i in range(args.nodes)}} for r in range(args.rounds + 1)]
    ckpt = Checkpoint(args.rounds, adapter, adapter, records, cfg.to_flat(), {"started": "now"})  # + FedAvgM velocity

    enc = PromptEncoder(tok, cfg.model.max_length)
    batch = enc.collate(enc.encode_all(generate_triage(32, seed=0)))
    stepper = PlainStepper(model, 320, cfg.train, 0)
    model.train()
    step = lambda: stepper.step(per_sample_forward(model, batch, cfg.model.precision).losses)  # noqa: E731
    step()  # warm-up
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        save = _median_seconds(lambda: save_checkpoint(out, ckpt), args.repeat)
        size = checkpoint_path(out).stat().st_size
        load = _median_seconds(lambda: load_checkpoint(out), args.repeat)
        export = _median_seconds(lambda: export_adapter(model, adapter, out / "adapter"), args.repeat)
        train = _median_seconds(step, args.repeat)

    print(f"model {cfg.model.name}: LoRA r={cfg.lora.r} on {cfg.lora.target_modules}, "
          f"{sum(a.size for a in adapter.values()):,} parameters ({adapter_bytes:,} bytes fp32)")
    print(f"checkpoint with {args.rounds} rounds x {args.nodes} nodes of metrics and a FedAvgM velocity: {size:,} bytes")
    print("| what | median seconds |\n| --- | ---: |")
    for what, secs in (("save checkpoint (atomic, fsync)", save), ("load + verify checkpoint", load),
                       ("export PEFT adapter folder", export), ("one local training step, 32 records", train)):
        print(f"| {what} | {secs:.4f} |")
    print(f"checkpoint_save_vs_train_step={save / train:.4f} checkpoint_save_vs_peft_export={save / export:.3f} "
          f"checkpoint_bytes_vs_adapter_bytes={size / adapter_bytes:.3f}")


if __name__ == "__main__":
    main()
