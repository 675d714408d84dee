"""Many labels: what listing them in the prompt costs, against training text -> label.

On a many-label preset (default ``simulations/bank-intents.toml``, 72 intents), side by side in
one run: the records encoded with the labels listed (``data.list-labels=yes``, at a
``model.max-length`` long enough that nothing is cut) and not listed (the preset's ``auto``):
tokens per record, and the median time of a DP-SGD step (Opacus hooks, the preset's batch size
and precision) on the same records; then the evaluation time of label scoring on the same
held-out records for both prompts.

    python benchmarks/many_labels.py [PRESET] [--steps 3] [--records 64]

Last line: ``tokens_per_record_listed=A tokens_per_record_unlisted=B step_time_ratio=X``
(X = unlisted step time / listed step time).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

from fedtune.common.config import load_preset
from fedtune.common.data import PromptEncoder, simulation_pool
from fedtune.common.evaluation import evaluate
from fedtune.common.model import add_lora, load_base_model, load_tokenizer
from fedtune.common.objective import per_sample_forward
from fedtune.node.privacy import DPPlan, DPStepper, poisson_sample_rate


def measure(cfg, tok, steps: int, records: int) -> tuple[float, float, float]:
    """(tokens per record, median DP step seconds, label-scoring seconds for ``records`` held-out records)."""
    pool, labels = simulation_pool(cfg.data)
    enc = PromptEncoder(tok, cfg.model.max_length)
    data = enc.encode_all(pool[:max(records, cfg.train.batch_size)])
    tokens = sum(len(e.prompt_ids) + len(e.target_ids) for e in data) / len(data)
    assert not any(e.truncated for e in data), "raise --listed-max-length: records were cut"
    model = add_lora(load_base_model(cfg.model), cfg.lora, seed=0)
    q = poisson_sample_rate(len(data), cfg.train.batch_size)
    stepper = DPStepper(model, len(data), cfg.train, DPPlan(1.0, q, steps, 1.0))  # timing only: a fixed batch
    batch = enc.collate(data[:cfg.train.batch_size])
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        stepper.step(per_sample_forward(model, batch, cfg.model.precision).losses)
        times.append(time.perf_counter() - t0)
    stepper.close()
    t0 = time.perf_counter()
    evaluate(model, enc, data[:records], cfg.train.eval_batch_size, cfg.model.precision, labels, method="labels")
    return tokens, statistics.median(times), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("preset", nargs="?", default="simulations/bank-intents.toml")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--records", type=int, default=64)
    ap.add_argument("--listed-max-length", type=int, default=768)
    args = ap.parse_args()
    cfg, _ = load_preset(args.preset)
    tok = load_tokenizer(cfg.model.name)
    listed = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, list_labels="yes"),
                                 model=dataclasses.replace(cfg.model, max_length=args.listed_max_length))
    rows = {}
    for name, c in (("labels listed", listed), ("labels not listed", cfg)):
        rows[name] = measure(c, tok, args.steps, args.records)
        tokens, step, scoring = rows[name]
        print(f"{name:18s} {tokens:6.0f} tokens/record  DP step {step:6.2f} s  label scoring of {args.records} "
              f"records {scoring:6.1f} s", flush=True)
    (a, sa, _), (b, sb, _) = rows["labels listed"], rows["labels not listed"]
    print(f"tokens_per_record_listed={a:.0f} tokens_per_record_unlisted={b:.0f} step_time_ratio={sb / sa:.3f}")


if __name__ == "__main__":
    main()
