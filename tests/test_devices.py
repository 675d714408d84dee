"""Where a node's model runs: model.device, 4-bit (QLoRA) bases, GPU shares of simulated nodes.

This machine has no GPU: these tests check what holds everywhere (settings checked at the edge, a
clear refusal where the hardware is missing, inputs following the model's device).  What needs a
GPU is measured on one, not here (docs/reference/measured.md)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fedtune.common.config import ConfigError, RunConfig, load_preset
from fedtune.common.model import ModelError, add_lora, device, load_base_model, model_device
from fedtune.lab.simulation import federation_config, preset_text

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


@pytest.mark.parametrize("key, value, expected", [
    ("model.device", "tpu", "model.device must be one of auto, cpu, cuda"),
    ("model.quantization", "8bit", "model.quantization must be one of none, 4bit"),
])
def test_device_and_quantization_are_checked_at_the_edge(key, value, expected):
    with pytest.raises(ConfigError, match=expected):
        RunConfig.from_flat({key: value})


@no_gpu
def test_a_gpu_asked_for_where_there_is_none_is_refused_naming_the_setting(tiny_cfg):
    with pytest.raises(ModelError, match="model.device = 'cuda' but torch sees no CUDA GPU"):
        device("cuda")
    with pytest.raises(ModelError, match="set model.device = 'auto' or 'cpu'"):
        load_base_model(dataclasses.replace(tiny_cfg.model, device="cuda"))
    assert device("auto") == device("cpu") == torch.device("cpu")


@no_gpu
def test_a_4bit_base_on_a_cpu_node_is_refused_before_anything_loads(tiny_cfg):
    with pytest.raises(ModelError, match="model.quantization = '4bit' needs a CUDA GPU"):
        load_base_model(dataclasses.replace(tiny_cfg.model, quantization="4bit"))


def test_the_model_and_the_inputs_it_is_given_are_on_model_device(tiny_cfg):
    from fedtune.common.data import PromptEncoder, generate_triage
    from fedtune.common.label_scoring import label_scores, label_targets
    from fedtune.common.model import load_tokenizer

    model = add_lora(load_base_model(dataclasses.replace(tiny_cfg.model, device="cpu")), tiny_cfg.lora, seed=0)
    assert model_device(model) == torch.device("cpu")
    assert {p.device for p in model.parameters()} == {torch.device("cpu")}
    enc = PromptEncoder(load_tokenizer(tiny_cfg.model.name), tiny_cfg.model.max_length)
    prompts = [e.prompt_ids for e in enc.encode_all(generate_triage(3, seed=0))]
    scores = label_scores(model, enc, prompts, label_targets(enc, ["cardiology", "urology"]))
    assert scores.shape == (3, 2) and scores.device == model_device(model) and torch.isfinite(scores).all()


def test_simulated_nodes_get_their_gpu_share_from_the_preset(tmp_path):
    preset = tmp_path / "gpu.toml"
    preset.write_text("[simulation]\nnodes = 8\ngpus-per-node = 0.25\n")
    _, info = load_preset(preset)
    assert info.gpus_per_node == 0.25
    assert "num-supernodes=8" in federation_config(info) and "client-resources-num-gpus=0.25" in federation_config(info)
    assert "gpus-per-node = 0.25" in preset_text(info.values, info)  # what --resume reads back
    _, cpu_only = load_preset(None)
    assert "num-gpus" not in federation_config(cpu_only)
    for bad in ("2", "-0.5", "true"):
        with pytest.raises(ConfigError, match="simulation.gpus-per-node must be a share of one GPU"):
            load_preset(None, [f"simulation.gpus-per-node={bad}"])


def test_the_gpu_presets_ask_for_what_they_say():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "simulations"
    cfg, info = load_preset(root / "gpu-1b.toml")
    assert info.gpus_per_node == 0.25 and cfg.model.quantization == "none" and "1.7B" in cfg.model.name
    cfg, info = load_preset(root / "gpu-8b-4bit.toml")
    assert info.gpus_per_node == 0.5 and cfg.model.quantization == "4bit" and cfg.model.device == "cuda"
