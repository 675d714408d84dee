"""One owner per model cache, and a cached model is only ever handed out holding the adapter its
caller names: what one caller trained never reaches another's training or evaluation."""

from __future__ import annotations

import numpy as np
import torch

from fedtune.common.adapters import get_adapter_arrays
from fedtune.common.config import RunConfig
from fedtune.common.model_cache import ModelCache, ModelSpec
from fedtune.coordinator.rounds import Coordinator
from fedtune.lab.baselines import Baselines
from fedtune.node.process_cache import NODE_PROCESS

from loopback import LoopbackGrid


def _same(a, b) -> bool:
    return list(a) == list(b) and all(np.array_equal(a[n], b[n]) for n in a)


def _train_in_place(model) -> None:
    """What local training does to a cached model: its LoRA weights change in place."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.5)


def test_a_cached_model_is_handed_out_holding_exactly_the_adapter_asked_for(tiny_cfg):
    cache, spec = ModelCache(), ModelSpec.of(tiny_cfg)
    initial = cache.initial_adapter(spec)
    model, _ = cache.holding(spec, initial)
    _train_in_place(model)  # caller 1 trains ...
    trained = get_adapter_arrays(model)
    assert not _same(trained, initial)

    again, _ = cache.holding(spec, initial)  # ... caller 2 asks for the initial adapter: it gets exactly that
    assert again is model  # the same loaded model (loaded once) ...
    assert _same(get_adapter_arrays(again), initial)  # ... without caller 1's training
    assert _same(cache.initial_adapter(spec), initial)


def test_the_initial_adapter_is_a_fresh_copy_each_time(tiny_cfg):
    cache, spec = ModelCache(), ModelSpec.of(tiny_cfg)
    first = cache.initial_adapter(spec)
    for a in first.values():
        a += 1.0  # a caller scribbles on its copy
    assert not _same(cache.initial_adapter(spec), first)
    assert all(np.all(a[...] == 0) for n, a in cache.initial_adapter(spec).items() if "lora_B" in n)  # B = 0 as built


def test_a_cache_evicts_its_least_recently_used_model_beyond_its_capacity(tiny_cfg):
    cache = ModelCache(capacity=1)
    spec0, spec1 = ModelSpec.of(tiny_cfg), ModelSpec(tiny_cfg.model, tiny_cfg.lora, tiny_cfg.train.seed + 1)
    m0, _ = cache.holding(spec0, cache.initial_adapter(spec0))
    m1, _ = cache.holding(spec1, cache.initial_adapter(spec1))
    assert m1 is not m0
    assert not _same(cache.initial_adapter(spec0), cache.initial_adapter(spec1))  # A is seeded per spec
    m0_again, _ = cache.holding(spec0, cache.initial_adapter(spec0))
    assert m0_again is not m0  # spec0 was evicted and reloaded


def test_the_coordinator_and_the_baselines_never_use_a_node_process_model(run_config):
    """In one process (the in-process federation), the coordinator's model for central evaluation and
    export, the baselines' model and the node process's model are three different objects, and a
    node's training leaves the coordinator's global adapter as it was."""
    cfg = RunConfig.from_flat(run_config)
    coord = Coordinator(LoopbackGrid(2, cfg.to_flat()), cfg)
    start = {n: a.copy() for n, a in coord.global_arrays.items()}
    node_model, _, _ = NODE_PROCESS.prepare(cfg, {"partition-id": 0, "num-partitions": 2}, coord.global_arrays)
    _train_in_place(node_model)  # a node trains in this process

    coord_model, _ = coord.global_model()
    baselines = Baselines(cfg, 2, say=lambda _: None)
    lab_model, _ = baselines.models.holding(baselines.spec, baselines.initial)
    assert len({id(node_model), id(coord_model), id(lab_model)}) == 3
    assert _same(get_adapter_arrays(coord_model), start) and _same(coord.global_arrays, start)
    assert _same(baselines.initial, start)
