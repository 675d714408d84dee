"""What the frozen LoRA A of FFA-LoRA (``lora.freeze-a``) passes on, and where the clip bound sits.

With A frozen, each adapted module's update reads its input x only through A·x (r numbers).  This
script loads the model of a preset on the synthetic triage notes and a few records of its simulated
nodes and prints, at the initial adapter:

- the per-sample gradient norms of the trained LoRA tensors against ``privacy.max-grad-norm``
  (under Adam, a smaller C changes nothing once every gradient is clipped);
- for each initial A — the draw a run starts from (``fedtune/common/adapter_start.py``), PEFT's own
  seeded draw (the start before 594110a), and the shipped draw with the direction of the public
  template's input projected out (instruction, empty note: no record involved) — the share of the
  energy of A·x at a prompt's last token that is the same for every record (a constant is a bias:
  it moves every record's label scores alike).

    python benchmarks/adapter_start.py [PRESET] [--records 60]

Last line: ``clipped_share=X constant_share_start=A constant_share_peft=B constant_share_centred=C``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from fedtune.common.adapters import get_adapter_arrays, trainable_parameters
from fedtune.common.config import load_preset
from fedtune.common.data.load import triage_instruction
from fedtune.common.model import adapted_layer_indices, add_lora, load_base_model
from fedtune.common.model_cache import ModelSpec
from fedtune.common.objective import objective_for
from fedtune.node.process_cache import NodeCache

NODES = 4


def grad_norms(cache: NodeCache, cfg, start, records: int) -> np.ndarray:
    """Per-sample gradient norms of the trained tensors at ``start``, over the first records of each node."""
    norms = []
    for pid in range(NODES):
        model, encoder, data = cache.prepare(cfg, {"partition-id": pid, "num-partitions": NODES}, start)
        params = [p for p in trainable_parameters(model).values() if p.requires_grad]
        objective = objective_for(cfg.train.objective, encoder, data.train, data.labels, "fp32")
        model.train()
        for chunk in np.array_split(np.arange(min(records // NODES, len(data.train))), 2):
            losses = objective(model, chunk)
            for i in range(len(chunk)):
                grads = torch.autograd.grad(losses[i], params, retain_graph=i < len(chunk) - 1)
                norms.append(float(torch.sqrt(sum((g ** 2).sum() for g in grads))))
        model.eval()
    return np.array(norms)


def module_inputs(base, prompts: list[list[int]], first_layer: int, modules: list[str]) -> dict[str, np.ndarray]:
    """Each adapted module's input at the last position of each prompt, keyed ``"<layer>.<path>"`` (plain base model)."""
    seen: dict[str, list[np.ndarray]] = {}
    hooks = []
    for name, module in base.named_modules():
        parts = name.split(".layers.", 1)
        if len(parts) == 2 and name.rsplit(".", 1)[-1] in modules and int(parts[1].split(".")[0]) >= first_layer:
            hooks.append(module.register_forward_hook(
                lambda mod, inp, out, key=parts[1]: seen.setdefault(key, []).append(inp[0][0, -1].float().numpy())))
    with torch.no_grad():
        for ids in prompts:
            base(input_ids=torch.tensor([ids]))
    for h in hooks:
        h.remove()
    return {k: np.stack(v) for k, v in seen.items()}


def lora_a_name(draw, key: str) -> str:
    """The name of the LoRA A in ``draw`` that adapts module ``key`` (``"<layer>.<path>"``)."""
    return next(n for n in draw if f"layers.{key}.lora_A" in n)


def constant_share(inputs: dict[str, np.ndarray], draw) -> float:
    """Mean over A's rows of mean(A·x)² / mean((A·x)²) across records (1: the same for every record)."""
    shares = []
    for key, x in inputs.items():
        p = x @ draw[lora_a_name(draw, key)].T
        shares += list(p.mean(0) ** 2 / (p ** 2).mean(0))
    return float(np.mean(shares))


def centred(draw, template_inputs: dict[str, np.ndarray]):
    """``draw`` with each A row's component along its module's template input removed, row norms kept."""
    out = dict(draw)
    for key, x in template_inputs.items():
        name = lora_a_name(draw, key)
        mu = x[0] / np.linalg.norm(x[0])
        a = draw[name]
        c = a - np.outer(a @ mu, mu)
        out[name] = c * np.linalg.norm(a, axis=1, keepdims=True) / np.linalg.norm(c, axis=1, keepdims=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("preset", nargs="?", default="simulations/quickstart.toml")
    ap.add_argument("--records", type=int, default=60)
    args = ap.parse_args()
    cfg, _ = load_preset(args.preset)
    if cfg.data.source != "synthetic-triage":  # the template below is the triage notes' instruction
        ap.error(f"{args.preset}: data.source is {cfg.data.source!r}; this diagnostic reads presets on "
                 "'synthetic-triage' (e.g. simulations/quickstart.toml)")
    cache = NodeCache()
    spec = ModelSpec.of(cfg)
    start = cache.models.initial_adapter(spec)
    norms = grad_norms(cache, cfg, start, args.records)
    clipped = float((norms > cfg.privacy.max_grad_norm).mean())
    print(f"per-sample gradient norms over {norms.size} records: p10 {np.percentile(norms, 10):.3g} median "
          f"{np.median(norms):.3g} p90 {np.percentile(norms, 90):.3g}; C = {cfg.privacy.max_grad_norm:g}, "
          f"clipped: {clipped:.0%}")

    encoder = cache.models.encoder(spec)
    records = [e for pid in range(NODES) for e in
               cache.data(cfg, {"partition-id": pid, "num-partitions": NODES}).train[:args.records // NODES]]
    template = encoder.encode_prompt([{"role": "system", "content": triage_instruction(cfg.data)},
                                      {"role": "user", "content": ""}])  # public: the instruction, no note
    base = load_base_model(cfg.model)
    first = (adapted_layer_indices(base, cfg.lora.top_layers) or [0])[0]
    inputs = module_inputs(base, [list(e.prompt_ids) for e in records], first, list(cfg.lora.modules))
    template_inputs = module_inputs(base, [template], first, list(cfg.lora.modules))
    peft_draw = get_adapter_arrays(add_lora(base, cfg.lora, cfg.train.seed))  # PEFT's own seeded draw, as before
    shares = {"start": constant_share(inputs, start), "peft": constant_share(inputs, peft_draw),
              "centred": constant_share(inputs, centred(start, template_inputs))}
    print(f"constant share of A·x at the last prompt token over {len(records)} records: " +
          ", ".join(f"{k} {v:.3f}" for k, v in shares.items()))
    print(f"clipped_share={clipped:.3f} " + " ".join(f"constant_share_{k}={v:.3f}" for k, v in shares.items()))


if __name__ == "__main__":
    main()
