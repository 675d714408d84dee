import numpy as np
import pytest
import torch

from fedtune.common.adapters import (
    AdapterMismatch, apply_delta, delta, export_adapter, get_adapter_arrays, set_adapter_arrays,
)
from fedtune.common.data import generate_triage


def test_adapter_arrays_are_exactly_the_lora_parameters(tiny_peft, tiny_cfg):
    model, _, _ = tiny_peft
    arrays = get_adapter_arrays(model)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert list(arrays) == list(trainable)
    assert sum(a.size for a in arrays.values()) == sum(p.numel() for p in trainable.values())
    assert all(".lora_A." in n or ".lora_B." in n for n in arrays)
    modules = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in arrays}
    assert modules == set(tiny_cfg.lora.modules)
    n_layers = model.config.num_hidden_layers
    assert len(arrays) == 2 * n_layers * len(tiny_cfg.lora.modules)  # A and B per targeted module
    for n, a in arrays.items():
        assert a.shape == tuple(trainable[n].shape) and a.dtype == np.float32
    base = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert base and not set(base) & set(arrays)


def test_delta_apply_round_trips_exactly(tiny_peft):
    model, _, _ = tiny_peft
    g = get_adapter_arrays(model)
    rng = np.random.default_rng(0)
    local = {n: (a + rng.normal(size=a.shape)).astype(np.float32) for n, a in g.items()}
    d = delta(local, g)
    back = apply_delta(g, d)
    for n in g:
        np.testing.assert_allclose(back[n], local[n], rtol=0, atol=1e-6)
    # And through the model: set -> get is bit-exact.
    set_adapter_arrays(model, local)
    for n, a in get_adapter_arrays(model).items():
        assert np.array_equal(a, local[n])


def test_set_adapter_refuses_anything_but_the_adapter(tiny_peft):
    model, _, _ = tiny_peft
    g = get_adapter_arrays(model)
    first = next(iter(g))
    with pytest.raises(AdapterMismatch, match="names differ"):
        set_adapter_arrays(model, {**g, "model.embed_tokens.weight": np.zeros(3, np.float32)})
    with pytest.raises(AdapterMismatch, match="shape"):
        set_adapter_arrays(model, {**g, first: np.zeros((1, 1), np.float32)})
    bad = dict(g)
    bad[first] = g[first].copy()
    bad[first][0, 0] = np.nan
    with pytest.raises(AdapterMismatch, match="NaN"):
        set_adapter_arrays(model, bad)


def test_exported_adapter_reloads_with_peft_and_gives_the_same_logits(tiny_peft, tiny_cfg, tmp_path):
    from peft import PeftModel

    from fedtune.common.model import load_base_model

    model, _, enc = tiny_peft
    rng = np.random.default_rng(1)
    trained = {n: (a + 0.1 * rng.normal(size=a.shape)).astype(np.float32) for n, a in get_adapter_arrays(model).items()}
    out = export_adapter(model, trained, tmp_path / "adapter", {"model.name": tiny_cfg.model.name})
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert (out / "fedtune.json").is_file()
    reloaded = PeftModel.from_pretrained(load_base_model(tiny_cfg.model), str(out)).eval()
    batch = enc.collate(enc.encode_all(generate_triage(3, seed=0)))
    with torch.no_grad():
        a = model.eval()(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        b = reloaded(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert torch.equal(a, b)
    assert not torch.equal(a, load_base_model(tiny_cfg.model)(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits)


def test_top_layers_adapts_only_the_last_layers_and_backward_stops_there(tiny_cfg, tmp_path):
    """lora.top-layers = 1 on a 2-layer model: adapter tensors only in layer 1, no gradient reaches layer 0
    (the backward pass stops at the lowest adapted layer), and the adapter exports and reloads with PEFT."""
    import dataclasses

    from peft import PeftModel

    from fedtune.common.data import PromptEncoder
    from fedtune.common.model import ModelError, add_lora, load_base_model, load_tokenizer
    from fedtune.common.objective import per_sample_forward

    enc = PromptEncoder(load_tokenizer(tiny_cfg.model.name), tiny_cfg.model.max_length)
    batch = enc.collate(enc.encode_all(generate_triage(3, seed=0)))
    reached = {}
    for top in (0, 1):
        model = add_lora(load_base_model(tiny_cfg.model), dataclasses.replace(tiny_cfg.lora, top_layers=top), seed=0)
        layers = {n.split(".layers.")[1].split(".")[0] for n in get_adapter_arrays(model)}
        assert layers == ({"0", "1"} if top == 0 else {"1"})
        hit = []
        model.base_model.model.model.layers[0].register_full_backward_hook(lambda *_: hit.append(True))
        per_sample_forward(model, batch, "fp32").losses.sum().backward()
        reached[top] = bool(hit)
    assert reached == {0: True, 1: False}
    trained = {n: (a + 0.1).astype(np.float32) for n, a in get_adapter_arrays(model).items()}
    out = export_adapter(model, trained, tmp_path / "adapter", {"model.name": tiny_cfg.model.name})
    reloaded = PeftModel.from_pretrained(load_base_model(tiny_cfg.model), str(out))
    assert sorted(get_adapter_arrays(reloaded)) == sorted(trained)
    with pytest.raises(ModelError, match="lora.top-layers=3 but the model has 2 transformer layers"):
        add_lora(load_base_model(tiny_cfg.model), dataclasses.replace(tiny_cfg.lora, top_layers=3), seed=0)


def test_the_initial_adapter_is_made_without_reading_a_base_weight_and_is_the_loaded_models(tiny_cfg, monkeypatch):
    """The coordinator builds the start from the model's config (meta device): the same arrays a party that loads
    the weights starts from; A drawn like PEFT's default (|A| <= 1/sqrt(fan_in)) per seed, B zero."""
    import dataclasses

    from fedtune.common import model_cache
    from fedtune.common.model_cache import ModelCache, ModelSpec

    spec = ModelSpec.of(tiny_cfg)
    real_load = model_cache.load_base_model
    monkeypatch.setattr(model_cache, "load_base_model", lambda *a: pytest.fail("base weights were loaded"))
    weightless = ModelCache().initial_adapter(spec)
    monkeypatch.setattr(model_cache, "load_base_model", real_load)
    loading = ModelCache()
    model, _ = loading.holding(spec, loading.initial_adapter(spec))
    assert loading.initial_adapter(spec).keys() == weightless.keys() == get_adapter_arrays(model).keys()
    for name, start in weightless.items():
        assert np.array_equal(start, loading.initial_adapter(spec)[name])
        if "lora_A" in name:
            assert np.abs(start).max() <= 1 / np.sqrt(start.shape[1]) and np.abs(start).min() > 0
        else:
            assert not start.any()
    other = ModelCache().initial_adapter(dataclasses.replace(spec, seed=spec.seed + 1))
    assert not np.array_equal(next(iter(other.values())), next(iter(weightless.values())))


def test_an_adapter_saved_from_the_weightless_skeleton_is_the_one_saved_from_the_loaded_model(tiny_cfg, tmp_path,
                                                                                               monkeypatch):
    """What the coordinator writes at the end of a run without loading the base: PEFT reloads it onto the real base
    and gets exactly the logits of the loaded model holding the same arrays."""
    from peft import PeftModel
    from safetensors.numpy import load_file

    from fedtune.common import model_cache
    from fedtune.common.model import load_base_model
    from fedtune.common.model_cache import ModelCache, ModelSpec

    spec = ModelSpec.of(tiny_cfg)
    rng = np.random.default_rng(3)
    start = ModelCache().initial_adapter(spec)
    trained = {n: (a + 0.1 * rng.normal(size=a.shape)).astype(np.float32) for n, a in start.items()}
    real_load = model_cache.load_base_model
    monkeypatch.setattr(model_cache, "load_base_model", lambda *a: pytest.fail("base weights were loaded"))
    light = export_adapter(ModelCache().skeleton(spec), trained, tmp_path / "light", {"model.name": tiny_cfg.model.name})
    monkeypatch.setattr(model_cache, "load_base_model", real_load)
    model, enc = ModelCache().holding(spec, trained)
    full = export_adapter(model, trained, tmp_path / "full", {"model.name": tiny_cfg.model.name})
    a, b = load_file(str(light / "adapter_model.safetensors")), load_file(str(full / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert (light / "adapter_config.json").read_text() == (full / "adapter_config.json").read_text()
    reloaded = PeftModel.from_pretrained(load_base_model(tiny_cfg.model), str(light)).eval()
    batch = enc.collate(enc.encode_all(generate_triage(3, seed=0)))
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits,
                           model.eval()(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits)


def test_a_coordinator_without_a_central_eval_file_starts_without_loading_the_base_model(tiny_cfg, monkeypatch):
    from fedtune.common import model_cache
    from fedtune.common.model_cache import ModelCache, ModelSpec
    from fedtune.coordinator.rounds import Coordinator

    monkeypatch.setattr(model_cache, "load_base_model", lambda *a: pytest.fail("base weights were loaded"))
    coord = Coordinator(None, tiny_cfg)
    start = ModelCache().initial_adapter(ModelSpec.of(tiny_cfg))
    assert coord.global_arrays.keys() == start.keys()
    assert all(np.array_equal(coord.global_arrays[n], start[n]) for n in start)
