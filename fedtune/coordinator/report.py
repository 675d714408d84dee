"""Results a person can read: ``metrics.jsonl`` (one object per round), ``report.md`` with PNG
plots, and - after ``fedtune simulate --baselines`` - the comparison table (``comparison.json``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from fedtune.common.files import atomic_write_text
from fedtune.common.messages import BUDGET_EXHAUSTED


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


class RunRecorder:
    """Appends one JSON line per round and renders the Markdown report at the end.

    ``records``: the rounds a resumed run already completed (from its checkpoint); ``metrics.jsonl``
    is rewritten to exactly those, dropping a line half-written by the crash or a round never checkpointed.
    """

    def __init__(self, out_dir: str | Path, meta: Mapping[str, Any], records: Sequence[Mapping[str, Any]] = ()):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.meta = dict(meta)
        self.metrics_path = self.out / "metrics.jsonl"
        self.records: list[dict] = [dict(r) for r in records]
        atomic_write_text(self.out / "run.json", json.dumps(self.meta, indent=2, sort_keys=True) + "\n")
        atomic_write_text(self.metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records))

    def log_round(self, record: Mapping[str, Any]) -> None:
        line = json.dumps(record, sort_keys=True)
        with self.metrics_path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.records.append(dict(record))

    def finish(self, extra: Mapping[str, Any] | None = None) -> Path:
        self.meta["finished"] = dict(extra or {})
        atomic_write_text(self.out / "run.json", json.dumps(self.meta, indent=2, sort_keys=True) + "\n")
        return write_report(self.out)


def write_report(out_dir: str | Path) -> Path:
    """(Re)render ``report.md`` and its plots from the files in ``out_dir``."""
    from fedtune.coordinator.plots import write_plots

    out = Path(out_dir)
    meta = json.loads((out / "run.json").read_text(encoding="utf-8"))
    records = read_metrics(out / "metrics.jsonl")
    comparison_path = out / "comparison.json"
    comparison = json.loads(comparison_path.read_text(encoding="utf-8")) if comparison_path.is_file() else None
    plots = write_plots(records, out, comparison)
    path = out / "report.md"
    atomic_write_text(path, render_report(records, meta, meta.get("finished", {}), comparison, plots))
    return path


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "–" if v is None else format(v, spec) if isinstance(v, (int, float)) else str(v)


def _aggregation(r: dict) -> str:
    """How a round's updates were combined, e.g. 'SecAgg+ of 6 (2 dropped)'."""
    if not r.get("round"):
        return "–"
    how = r.get("aggregation", "")
    if how == "aborted":
        return f"aborted: {str(r.get('secagg_error', ''))[:80]}"
    if not r.get("aggregated"):  # skipped / rejected
        return how
    dropped, retries = len(r.get("dropped_nodes", [])), len(r.get("retries", []))
    notes = [f"{dropped} dropped"] * bool(dropped) + [f"after {retries} failed attempt(s)"] * bool(retries)
    how = f"SecAgg+ of {r.get('aggregated', 0)}" if r.get("secure_aggregation") else \
        f"in the clear, {r.get('aggregated', 0)} nodes"
    strategy = r.get("aggregation", "fedavg")
    notes = ([strategy] if strategy != "fedavg" else []) + notes
    return how + (f" ({', '.join(notes)})" if notes else "")


def _summary(first: Mapping[str, Any], last: Mapping[str, Any]) -> list[str]:
    a0, a1 = first.get("eval_accuracy"), last.get("eval_accuracy")
    if a0 is None or a1 is None:
        return ["No node returned an evaluation; see the node failures below.", ""]
    line = (f"Held-out exact-match accuracy (normalised) went from **{a0:.1%}** (round 0, base model) to "
            f"**{a1:.1%}** after round {last['round']} ({(a1 - a0) * 100:+.1f} points)")
    if last.get("eval_macro_f1") is not None:
        line += f"; macro-F1 {last['eval_macro_f1']:.1%}"
    if last.get("central_accuracy") is not None:
        line += f"; on the coordinator's central evaluation file {last['central_accuracy']:.1%}"
    return [line + ".", ""]


def stopped_when(stopped: Mapping[str, Any]) -> str:
    """'after round r' for a requested stop (round r completed), 'at round r' where round r could not run."""
    return f"{'after' if stopped.get('kind') == 'requested' else 'at'} round {stopped['round']}"


def render_report(records: Sequence[Mapping[str, Any]], meta: Mapping[str, Any], extra: Mapping[str, Any],
                  comparison: Sequence[Mapping[str, Any]] | None = None, plots: Sequence[Path] = ()) -> str:
    cfg = meta.get("config", {})
    lines = ["# fedtune run report", ""]
    if records:
        lines += _summary(records[0], records[-1])
    stopped = extra.get("stopped")
    if stopped:
        lines += [f"**The run stopped {stopped_when(stopped)}** of {cfg.get('federation.rounds', '?')}: "
                  f"{stopped['reason']}.", ""]
        if stopped.get("kind") == "failure":
            lines += ["Every completed round is in the checkpoint. Fix the cause, then continue with "
                      f"`fedtune simulate --resume {meta.get('config', {}).get('output.dir') or '<this folder>'}` "
                      "(deployed: run config `output.resume=true`).", ""]
    if comparison:
        lines += ["## Federated vs baselines", "",
                  "Same data split, same held-out records, same total number of local optimiser steps "
                  "(see `fedtune/lab/baselines.py`). Accuracy is measured as in the rounds "
                  "(label scoring for a labelled task).", ""]
        lines += comparison_table(comparison) + [""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    lines += ["## What was run", "", "| setting | value |", "| --- | --- |"]
    for key in ("started", "nodes_connected", "seconds_total"):
        if key in meta or key in extra:
            lines.append(f"| {key.replace('_', ' ')} | {extra.get(key, meta.get(key))} |")
    for resumed in meta.get("resumed", []):
        lines.append(f"| resumed | after round {resumed['after_round']} at {resumed['time']} |")
    for key, value in sorted(cfg.items()):
        lines.append(f"| `{key}` | `{value}` |")
    lines += [
        "", "## Rounds", "",
        "Round 0 evaluates the initial adapter (LoRA B = 0, i.e. exactly the base model). Accuracy is exact "
        "match of the greedy answer and the reference after normalisation (case, punctuation, articles, spaces), "
        "ROUGE-L the mean LCS F1 of the two; both pooled over the held-out records of the nodes that evaluated "
        "(every node, or a sample per round under `federation.fraction-evaluate`). Macro-F1 (tasks with "
        "a label set) is of the pooled predictions; perplexity is exp of the mean token loss of the references.", "",
        "| round | eval accuracy | macro-F1 | ROUGE-L | eval loss | perplexity | central accuracy | train loss | "
        "nodes trained | nodes evaluated | aggregation | bytes sent (all nodes) | seconds |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for r in records:
        nodes = r.get("nodes", {})
        trained = [n for n in nodes.values() if n.get("status") == "ok" and "train_loss" in n]
        sent = sum(n.get("bytes_sent", 0) for n in trained)
        evaluated = sum(1 for n in nodes.values() if "eval_examples" in n)
        lines.append(
            f"| {r['round']} | {_fmt(r.get('eval_accuracy'), '.1%')} | {_fmt(r.get('eval_macro_f1'), '.1%')} | "
            f"{_fmt(r.get('eval_rouge_l'), '.1%')} | {_fmt(r.get('eval_loss'))} | {_fmt(r.get('eval_perplexity'), '.2f')} | "
            f"{_fmt(r.get('central_accuracy'), '.1%')} | "
            f"{_fmt(r.get('train_loss'))} | {len(trained) if r['round'] else '–'} | {evaluated} | {_aggregation(r)} | "
            f"{sent if r['round'] else '–'} | {_fmt(r.get('seconds'), '.1f')} |"
        )
    if records and records[-1].get("nodes"):
        lines += [
            "", f"## Nodes in the last round ({records[-1]['round']})", "",
            "| node | name | status | train records | train loss | eval accuracy | eval loss | bytes sent | train seconds |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for nid, n in sorted(records[-1]["nodes"].items()):
            lines.append(
                f"| {nid} | {n.get('name', '')} | {n.get('status', '')} | {_fmt(n.get('examples'), 'd')} | "
                f"{_fmt(n.get('train_loss'))} | {_fmt(n.get('eval_accuracy'), '.1%')} | {_fmt(n.get('eval_loss'))} | "
                f"{_fmt(n.get('bytes_sent'), 'd')} | {_fmt(n.get('train_seconds'), '.1f')} |"
            )
    lines += _privacy_section(records, meta.get("config", {}))
    failures = []
    for r in records:
        for attempt in r.get("retries", []):
            failures += [(r["round"], f"{name} (attempt {attempt['attempt'] + 1})", err)
                         for name, err in attempt["failures"].items()]
            failures.append((r["round"], f"whole round (attempt {attempt['attempt'] + 1})", attempt["reason"]))
        failures += [(r["round"], n.get("name", nid), n.get("error", n.get("status")))
                     for nid, n in r.get("nodes", {}).items() if n.get("status") not in (None, "ok", BUDGET_EXHAUSTED)]
    if failures:
        lines += ["", "## Node failures", "", "Nodes that failed, timed out or sent something unusable; a round "
                  "went ahead when at least `federation.min-nodes` delivered, otherwise it was retried.", "",
                  "| round | node | reason |", "| ---: | --- | --- |"]
        lines += [f"| {rnd} | {nid} | {str(err)[:200].replace('|', '/')} |" for rnd, nid, err in failures]
    if extra.get("adapter"):
        lines += [
            "", "## Final adapter", "",
            f"`{extra['adapter']}` is a PEFT LoRA folder (only adapter tensors, no base weights):", "",
            "```python",
            "from peft import PeftModel",
            "model = PeftModel.from_pretrained(base_model, \"" + str(extra["adapter"]) + "\")",
            "```", "",
            f"or `fedtune generate --adapter {extra['adapter']} \"your prompt\"`.",
        ]
    return "\n".join(lines) + "\n"


def _privacy_section(records: Sequence[Mapping[str, Any]], cfg: Mapping[str, Any]) -> list[str]:
    if not cfg.get("privacy.enabled"):
        return ["", "## Privacy", "", "Differential privacy was **off** for this run (`privacy.enabled = false`)."]
    lines = [
        "", "## Privacy (record-level DP-SGD per node)", "",
        f"Opacus DP-SGD on the LoRA parameters: Poisson sampling, per-sample clipping to "
        f"C = {cfg.get('privacy.max-grad-norm')}, Gaussian noise; accountant **{str(cfg.get('privacy.accountant')).upper()}**; "
        f"per-sample gradients via `{cfg.get('privacy.clipping')}`. ε is each node's total from its own ledger "
        "(all rounds it ever trained on this dataset), at that node's δ. Evaluation metrics on held-out records "
        "are not covered by ε.", "",
    ]
    by_name = [{n.get("name", nid): n for nid, n in r.get("nodes", {}).items()} for r in records]
    order = sorted({name for nodes in by_name for name in nodes})  # names: node ids change when a run resumes
    lines += ["| round | " + " | ".join(order) + " |", "| ---: |" + " ---: |" * len(order)]
    for r, nodes in zip(records[1:], by_name[1:]):
        cells = []
        for k in order:
            n = nodes.get(k, {})
            eps = n.get("epsilon")
            cell = "–" if eps is None else f"ε={eps:.3f}"
            if n.get("status") not in (None, "ok"):
                cell += f" ({n['status']})"
            cells.append(cell)
        lines.append(f"| {r['round']} | " + " | ".join(cells) + " |")
    last = {}
    for nodes in by_name[1:]:
        last.update({k: n for k, n in nodes.items() if "delta" in n})
    if last:
        lines += ["", "| node | records N | δ | σ | q | budget (max ε) |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for k in order:
            if k in last:
                n = last[k]
                lines.append(f"| {k} | {n.get('num_records')} | {n['delta']:.2e} | {n.get('noise_multiplier', 0):.3f} | "
                             f"{n.get('sample_rate', 0):.4f} | {n.get('max_epsilon')} |")
    stopped = [(r["round"], k) for r, nodes in zip(records, by_name) for k, n in nodes.items()
               if n.get("status") == BUDGET_EXHAUSTED]
    if stopped:
        first: dict[str, int] = {}
        for rnd, name in stopped:
            first.setdefault(name, rnd)
        lines += ["", "Nodes that stopped training because their own budget was spent: "
                  + ", ".join(f"{name} (from round {rnd})" for name, rnd in sorted(first.items())) + "."]
    return lines


def comparison_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown table of ``comparison.json``'s rows (accuracy as in the rounds, on all nodes' held-out records)."""
    def pct(v):
        return "–" if v is None else f"{v:.1%}"

    def num(v, spec=".3f"):
        return "–" if v is None else format(v, spec)

    lines = ["| setting | DP | accuracy | macro-F1 | ROUGE-L | eval loss | perplexity | max ε | total steps | seconds |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        dp = "–" if r["dp"] is None else ("yes" if r["dp"] else "no")
        lines.append(f"| {r['setting']} | {dp} | {pct(r['accuracy'])} | {pct(r['macro_f1'])} | {pct(r['rouge_l'])} | "
                     f"{num(r['loss'])} | {num(r['perplexity'], '.2f')} | {num(r['epsilon'], '.2f')} | {r['steps']} | "
                     f"{r['seconds']:.0f} |")
    return lines
