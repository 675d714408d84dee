"""Evaluation of a labelled task: scoring every label's likelihood vs greedy generation.

Evaluates the same held-out records of a preset's pool both ways, side by side in one run, twice:
with the base model (round 0: generation runs long where answers are wrong) and after training
one adapter briefly (no DP; a model that is neither random nor perfect):

    python benchmarks/eval_methods.py [PRESET] [--train-steps 12] [--records 160]

Prints seconds, accuracy and the share of valid labels per method; the last line is
``label_scoring_time_ratio_base=X label_scoring_time_ratio_trained=Y accuracy_labels=A
accuracy_generate=G`` (ratios = label scoring seconds / generation seconds).
"""

from __future__ import annotations

import argparse
import time

from fedtune.common.config import TrainConfig, load_preset
from fedtune.common.data import PromptEncoder, simulation_pool
from fedtune.common.evaluation import evaluate
from fedtune.common.metrics import match_label
from fedtune.common.model import add_lora, load_base_model, load_tokenizer
from fedtune.node.training import train_local


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("preset", nargs="?", default="simulations/quickstart.toml")
    ap.add_argument("--train-steps", type=int, default=12)
    ap.add_argument("--records", type=int, default=160)
    args = ap.parse_args()
    cfg, _ = load_preset(args.preset)
    pool, labels = simulation_pool(cfg.data)
    tok = load_tokenizer(cfg.model.name)
    enc = PromptEncoder(tok, cfg.model.max_length)
    model = add_lora(load_base_model(cfg.model), cfg.lora, seed=0)
    held_out, train = enc.encode_all(pool[:args.records]), enc.encode_all(pool[args.records:])
    tokens = sum(len(e.prompt_ids) + len(e.target_ids) for e in train) / len(train)
    print(f"{args.preset}: {len(labels)} labels, {tokens:.0f} tokens per record, {len(held_out)} held-out records")
    seconds, accuracy = {}, {}
    for stage in ("base model", "trained"):
        if stage == "trained":
            train_local(model, enc, train, TrainConfig(local_steps=args.train_steps, batch_size=cfg.train.batch_size,
                                                       lr=cfg.train.lr), cfg.model.precision, seed=0)
        for method in ("labels", "generate"):
            t0 = time.perf_counter()
            res = evaluate(model, enc, held_out, cfg.train.eval_batch_size, cfg.model.precision, labels,
                           cfg.train.eval_max_new_tokens, method)
            seconds[stage, method], accuracy[stage, method] = time.perf_counter() - t0, res.accuracy
            valid = sum(match_label(p, labels) is not None for p in res.predictions) / len(held_out)
            print(f"{stage:10s} {method:9s} {seconds[stage, method]:7.1f} s  accuracy {res.accuracy:6.1%}  "
                  f"valid labels {valid:6.1%}  loss {res.loss:.3f}", flush=True)
    ratio = {s: seconds[s, "labels"] / seconds[s, "generate"] for s in ("base model", "trained")}
    print(f"label_scoring_time_ratio_base={ratio['base model']:.3f} label_scoring_time_ratio_trained="
          f"{ratio['trained']:.3f} accuracy_labels={accuracy['trained', 'labels']:.3f} "
          f"accuracy_generate={accuracy['trained', 'generate']:.3f}")

if __name__ == "__main__":
    main()
