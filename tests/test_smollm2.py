"""Slow checks on the packaged SmolLM2-135M-Instruct (GGUF -> cached safetensors)."""

import time

import pytest
import torch

from fedtune.config import RunConfig
from fedtune.data import Example, PromptEncoder, generate_triage
from fedtune.evaluation import evaluate, generate
from fedtune.model import add_lora, load_base_model, load_tokenizer, resolve_model_path

pytestmark = pytest.mark.slow


def test_packaged_model_converts_once_and_then_loads_fast():
    path = resolve_model_path("smollm2-135m-instruct")  # converts on first use
    t = time.perf_counter()
    assert resolve_model_path("smollm2-135m-instruct") == path  # cached: no conversion
    assert time.perf_counter() - t < 2.0
    cfg = RunConfig()
    model = load_base_model(cfg.model)
    assert model.config.model_type == "llama" and 130e6 < model.num_parameters() < 140e6
    assert not any(p.requires_grad for p in model.parameters())


def test_base_model_cannot_already_triage():
    cfg = RunConfig()
    tok = load_tokenizer(cfg.model.name)
    model = add_lora(load_base_model(cfg.model), cfg.lora, seed=0)
    enc = PromptEncoder(tok, cfg.model.max_length)
    res = evaluate(model, enc, enc.encode_all(generate_triage(32, seed=5)), 32, "bf16")
    assert res.accuracy < 0.2 and res.loss > 1.0
    # LoRA B starts at zero: the wrapped model is exactly the base model.
    batch = enc.collate(enc.encode_all(generate_triage(2, seed=5)))
    with torch.no_grad():
        with model.disable_adapter():
            base = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        wrapped = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert torch.equal(base, wrapped)


def test_teacher_forced_exact_match_equals_greedy_generation():
    """One-pass accuracy must agree with really generating and comparing strings."""
    cfg = RunConfig()
    tok = load_tokenizer(cfg.model.name)
    model = load_base_model(cfg.model)
    enc = PromptEncoder(tok, cfg.model.max_length)
    questions = ["What is the capital of France?", "Reply with one word: what colour is grass?", "Say hello."]
    verdicts = []
    for q in questions:
        msgs = ({"role": "user", "content": q},)
        answer = generate(model, tok, enc, msgs, max_new_tokens=40)
        for completion in (answer, answer + " Indeed.", "Paris"):
            target_len = len(enc.encode(Example(msgs, completion)).target_ids)
            generated = generate(model, tok, enc, msgs, max_new_tokens=target_len + 2)
            teacher_forced = evaluate(model, enc, enc.encode_all([Example(msgs, completion)]), 1, "fp32").accuracy == 1.0
            assert teacher_forced == (generated == completion), (q, completion, generated)
            verdicts.append(teacher_forced)
    assert any(verdicts) and not all(verdicts)  # both outcomes were exercised
