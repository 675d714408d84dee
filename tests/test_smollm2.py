"""Slow checks on the packaged SmolLM2-135M-Instruct (GGUF -> cached safetensors)."""

import time

import pytest
import torch

from fedtune.common.config import RunConfig
from fedtune.common.data import Example, PromptEncoder, generate_triage
from fedtune.common.evaluation import evaluate, generate
from fedtune.common.model import add_lora, load_base_model, load_tokenizer, resolve_model_path

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
    res = evaluate(model, enc, enc.encode_all(generate_triage(32, seed=5)), 32, cfg.model.precision)
    assert res.accuracy < 0.2 and res.loss > 1.0
    # LoRA B starts at zero: the wrapped model is exactly the base model.
    batch = enc.collate(enc.encode_all(generate_triage(2, seed=5)))
    with torch.no_grad():
        with model.disable_adapter():
            base = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        wrapped = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert torch.equal(base, wrapped)


def test_batched_left_padded_evaluation_generates_what_one_prompt_alone_generates(monkeypatch):
    """evaluate() generates a whole batch at once (left padding) and skips records whose teacher-forced
    argmax already is the reference; each answer must be the one greedy decoding gives for that
    prompt alone, and the metrics must score those answers."""
    cfg = RunConfig()
    tok = load_tokenizer(cfg.model.name)
    model = load_base_model(cfg.model)
    enc = PromptEncoder(tok, cfg.model.max_length)
    questions = ["What is the capital of France?", "Reply with one word: what colour is grass?", "Say hello.",
                 "Name a planet of the solar system, in one word."]
    alone = [generate(model, enc, ({"role": "user", "content": q},), max_new_tokens=12) for q in questions]
    refs = [alone[0], alone[1] + " Indeed.", "Paris", alone[3].upper() + "!"]  # EM: yes, no, no, yes (normalised)
    data = enc.encode_all([Example(({"role": "user", "content": q},), r) for q, r in zip(questions, refs)])
    import fedtune.common.evaluation as evaluation

    generated = []
    real = evaluation.generate_answers
    monkeypatch.setattr(evaluation, "generate_answers", lambda m, e, prompts, *a: generated.extend(prompts) or real(m, e, prompts, *a))
    res = evaluate(model, enc, data, 4, "fp32", max_new_tokens=12)
    assert res.predictions == alone
    assert 0 < len(generated) < 4  # records whose teacher-forced argmax is the reference were not generated
    assert res.accuracy == 0.5
