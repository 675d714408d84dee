"""Shared fixtures: tiny Llama models built in code (real tokenizer, random weights)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def smol_tokenizer():
    """The SmolLM2 tokenizer, read from the packaged GGUF (no model weights, no network)."""
    from transformers import AutoTokenizer

    from fedtune.common.model import packaged_gguf

    gguf = packaged_gguf()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol_tokenizer) -> Path:
    """A 2-layer Llama with the SmolLM2 tokenizer, saved as a normal HF folder (model.name = its path)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(smol_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=smol_tokenizer.bos_token_id, eos_token_id=smol_tokenizer.eos_token_id,
        pad_token_id=smol_tokenizer.pad_token_id, tie_word_embeddings=True,
        initializer_range=0.2,  # large enough that a frozen tied lm_head still allows confident logits
    )
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(path)
    smol_tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def tiny_cfg(tiny_model_dir):
    """A RunConfig pointing at the tiny model, fp32 for exact comparisons."""
    from fedtune.common.config import RunConfig

    return RunConfig.from_flat({
        "model.name": str(tiny_model_dir), "model.precision": "fp32", "lora.r": 4, "lora.alpha": 8.0,
        "train.batch-size": 4, "train.local-steps": 3, "train.lr": 0.01, "data.records": 120,
    })


@pytest.fixture
def tiny_peft(tiny_cfg):
    """(peft model, tokenizer, encoder) for the tiny model; fresh per test."""
    from fedtune.common.data import PromptEncoder
    from fedtune.common.model import add_lora, load_base_model, load_tokenizer

    tok = load_tokenizer(tiny_cfg.model.name)
    model = add_lora(load_base_model(tiny_cfg.model), tiny_cfg.lora, seed=0)
    return model, tok, PromptEncoder(tok, tiny_cfg.model.max_length)


def tiny_run_config(model_dir: Path, ledgers: Path, **overrides) -> dict:
    """Flat run config for in-process federations (tests/loopback.py): tiny model, DP with a fixed σ."""
    from fedtune.common.config import RunConfig

    return RunConfig.from_flat({
        "model.name": str(model_dir), "model.precision": "fp32", "lora.r": 4, "lora.alpha": 8.0,
        "train.batch-size": 4, "train.local-steps": 2, "train.lr": 0.01, "data.records": 320,
        "privacy.state-dir": str(ledgers), "federation.min-nodes": 2, "secagg.stage-timeout": 1.0,
        "privacy.noise-multiplier": 1.0,  # fixed σ: skips the target-ε search
        **overrides,
    }).to_flat()


@pytest.fixture
def run_config(tiny_model_dir, tmp_path):
    return tiny_run_config(tiny_model_dir, tmp_path / "ledgers")
