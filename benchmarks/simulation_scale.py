"""Simulation at scale: what a round costs as the population grows and the sampled cohort stays fixed.

Each population is a full run on Flower's Simulation Runtime (``flwr run``, Ray backend), one after
another in this invocation, with the same cohort trained and evaluated per round
(``federation.fraction-train`` = ``fraction-evaluate`` = cohort / population, DP + SecAgg+ on, IID
split, the same records per node), so a round should cost the same at 4 nodes as at 1,000:

    python benchmarks/simulation_scale.py [--populations 4,10,20,100,1000] [--cohort 5] [--rounds 4]
        [--records-per-node 10] [--model tiny|packaged] [--paced] [--preset P] [--out DIR] [--set KEY=VALUE ...]

σ is fixed (``privacy.noise-multiplier = 1``; each node still checks its budget) unless ``--paced``:
a paced σ costs each node an accountant search the first time it meets a new plan (1-4 s with PRV
on a 2-core CPU, then cached in its worker process), which swamps a tiny model's round and makes
the comparison measure which rounds happened to hit that cache, not the population.

``--model tiny`` (default) builds a 2-layer Llama with the packaged SmolLM2 tokenizer (nothing is
downloaded); ``packaged`` keeps the preset's model (SmolLM2-135M; use populations up to 100).
Per population it prints the steady-state round (rounds 2.., after round 1 warmed the worker
processes) split into the nodes' data preparation (model + records ready for the message),
their training, SecAgg+, evaluation and the rest (messaging, sampling, checkpoint), the start-up
(``flwr run`` to round 0), and the peak memory of the whole simulation (PSS summed over this
process's descendants: SuperLink, simulation process, Ray workers; shared pages counted once).
Last line: ``round_time_ratio_pop1000_vs_pop10=X peak_memory_ratio_pop1000_vs_pop10=Y`` (the
largest population against the one nearest 10, when those are not run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import psutil  # noqa: E402

from fedtune.common.config import load_preset  # noqa: E402
from fedtune.lab.simulation import APP_DIR, read_metrics, run_simulation_config  # noqa: E402


def tiny_model(folder: Path) -> Path:
    """A 2-layer Llama (random weights) with the packaged SmolLM2 tokenizer, as the tests build it."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from fedtune.common.model import packaged_gguf

    if (folder / "config.json").is_file():
        return folder
    gguf = packaged_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


class PeakMemory:
    """Samples the summed PSS of this process's descendants every ``interval`` seconds."""

    def __init__(self, interval: float = 2.0):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        total = 0
        for p in psutil.Process().children(recursive=True):
            try:
                total += p.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._sample())

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def overrides(population: int, cohort: int, rounds: int, per_node: int, model: Path | None, paced: bool) -> list[str]:
    k = min(cohort, population)
    flat = [f"simulation.nodes={population}", f"federation.min-nodes={k}", f"federation.rounds={rounds}",
            f"federation.fraction-train={k / population!r}", f"federation.fraction-evaluate={k / population!r}",
            "federation.evaluate-all-last=false", "data.partition=iid", f"data.records={population * per_node}",
            "simulation.cpus-per-node=1"]
    if not paced:
        flat.append("privacy.noise-multiplier=1.0")
    if model is not None:
        flat += [f"model.name={json.dumps(str(model))}", "model.precision=fp32", "lora.r=4", "lora.top-layers=0",
                 "train.batch-size=4", "train.local-steps=2", "train.eval-max-new-tokens=4"]
    return flat


def steady_round(metrics: list[dict]) -> dict[str, float]:
    """Mean over the rounds after the first training round, split into its parts (seconds)."""
    rounds = [m for m in metrics if m["round"] >= 2] or [m for m in metrics if m["round"] >= 1]
    parts: dict[str, list[float]] = {k: [] for k in ("round", "prepare", "train", "secagg", "evaluate", "rest")}
    for m in rounds:
        trained = [n for n in m["nodes"].values() if "train_seconds" in n]
        prepare = statistics.mean(n.get("prepare_seconds", 0.0) for n in trained) if trained else 0.0
        train = statistics.mean(n["train_seconds"] for n in trained) if trained else 0.0
        secagg = m.get("secagg_seconds", 0.0)
        evaluate = m["seconds"] - m.get("train_phase_seconds", 0.0)
        parts["round"].append(m["seconds"])
        parts["prepare"].append(prepare)
        parts["train"].append(train)
        parts["secagg"].append(secagg)
        parts["evaluate"].append(evaluate)
        parts["rest"].append(m.get("train_phase_seconds", 0.0) - prepare - train - secagg)
    return {k: statistics.mean(v) for k, v in parts.items()}


def run_population(preset: str, flat: list[str], out: Path) -> dict:
    cfg, info = load_preset(preset, flat)
    start = time.monotonic()
    with PeakMemory() as mem:
        result = run_simulation_config(cfg, info, out, quiet=True, app_dir=APP_DIR)
    metrics = read_metrics(out / "metrics.jsonl")
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    startup = (time.monotonic() - start) - float(run.get("finished", {}).get("seconds_total", 0.0))
    last = metrics[-1]
    return {**steady_round(metrics), "startup": startup, "peak_gb": mem.peak / 2**30, "wall": result.seconds,
            "accuracy": last.get("eval_accuracy"), "evaluated": last.get("evaluated"),
            "trained": sum(1 for n in last["nodes"].values() if "train_seconds" in n)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--populations", default="4,10,20,100,1000")
    ap.add_argument("--cohort", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--records-per-node", type=int, default=10)
    ap.add_argument("--model", choices=("tiny", "packaged"), default="tiny")
    ap.add_argument("--paced", action="store_true", help="σ paced from each node's budget (the default for users)")
    ap.add_argument("--preset", default=str(APP_DIR / "simulations" / "quickstart.toml"))
    ap.add_argument("--out", default=None, help="results folder (default: a temporary one)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra preset overrides")
    args = ap.parse_args()
    root = Path(args.out).resolve() if args.out else Path(tempfile.mkdtemp(prefix="scale-bench-"))
    model = tiny_model(root / "tiny-llama") if args.model == "tiny" else None
    pops = [int(p) for p in args.populations.split(",")]
    rows = {}
    for i, pop in enumerate(pops):
        flat = overrides(pop, args.cohort, args.rounds, args.records_per_node, model, args.paced) + args.set
        print(f"[{i + 1}/{len(pops)}] {pop} nodes, {min(args.cohort, pop)} sampled per round ...", flush=True)
        rows[pop] = r = run_population(args.preset, flat, root / f"pop-{pop}")
        print(f"    round {r['round']:.1f} s (prepare {r['prepare']:.2f}, train {r['train']:.2f}, secagg "
              f"{r['secagg']:.2f}, evaluate {r['evaluate']:.2f}), start-up {r['startup']:.0f} s, peak "
              f"{r['peak_gb']:.2f} GB", flush=True)
    sigma = "paced σ" if args.paced else "σ = 1"
    print(f"\nworkload: {Path(args.preset).name} with the {args.model} model, cohort {args.cohort}, "
          f"{args.records_per_node} records per node, {args.rounds} rounds, DP ({sigma}) + SecAgg+; seconds per round "
          "(mean of rounds 2..; node parts: mean over the cohort)")
    print("| nodes | trained / evaluated per round | round (s) | data prep (s) | training (s) | SecAgg+ (s) "
          "| evaluation (s) | rest (s) | start-up (s) | peak memory (GB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for pop, r in rows.items():
        print(f"| {pop} | {r['trained']} / {r['evaluated']} | {r['round']:.2f} | {r['prepare']:.2f} | "
              f"{r['train']:.2f} | {r['secagg']:.2f} | {r['evaluate']:.2f} | {r['rest']:.2f} | {r['startup']:.0f} | "
              f"{r['peak_gb']:.2f} |")
    big, small = max(rows), min(rows, key=lambda p: abs(p - 10))
    print(f"round_time_ratio_pop{big}_vs_pop{small}={rows[big]['round'] / rows[small]['round']:.3f} "
          f"peak_memory_ratio_pop{big}_vs_pop{small}={rows[big]['peak_gb'] / rows[small]['peak_gb']:.3f}")


if __name__ == "__main__":
    main()
