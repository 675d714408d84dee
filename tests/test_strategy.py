"""Server optimisers over the aggregated delta: hand-computed steps (Reddi et al. 2021, Algorithm 2),
subsets of the adapter (FFA-LoRA), refusals that change nothing, and bit-exact resume through the checkpoint."""

from collections import OrderedDict
from math import sqrt

import numpy as np
import pytest

from fedtune.common.adapters import AdapterMismatch
from fedtune.common.config import ConfigError, RunConfig
from fedtune.coordinator.checkpoint import Checkpoint, check_resumable, load_checkpoint, save_checkpoint
from fedtune.coordinator.strategy import (BadAggregate, FedAdagrad, FedAdam, FedAvg, FedYogi, make_strategy,
                                          weighted_sum)

LR, B1, B2, TAU = 0.1, 0.9, 0.99, 1e-3
ADAPTIVE = [FedAdam, FedYogi, FedAdagrad]
ALL = [lambda: FedAvg(0.5, 0.9), *(lambda c=c: c(LR, B1, B2, TAU) for c in ADAPTIVE)]


def od(**arrays) -> "OrderedDict[str, np.ndarray]":
    return OrderedDict((n, np.asarray(a, np.float32)) for n, a in arrays.items())


def test_fedavg_weighting_matches_hand_computation():
    g = {"a": np.array([1.0, 1.0], np.float32), "b": np.array([[0.0]], np.float32)}
    d1 = {"a": np.array([1.0, 0.0], np.float32), "b": np.array([[3.0]], np.float32)}
    d2 = {"a": np.array([0.0, 4.0], np.float32), "b": np.array([[-1.0]], np.float32)}
    s, total = weighted_sum([(d1, 30), (d2, 10)])
    assert total == 40
    new = FedAvg().step(g, s, total)
    # a: 1 + (30*[1,0] + 10*[0,4]) / 40 = [1.75, 2.0];  b: 0 + (30*3 + 10*-1)/40 = 2.0
    np.testing.assert_allclose(new["a"], [1.75, 2.0])
    np.testing.assert_allclose(new["b"], [[2.0]])
    half = FedAvg(server_lr=0.5).step(g, s, total)
    np.testing.assert_allclose(half["a"], [1.375, 1.5])


def test_weighted_sum_rejects_mismatched_or_empty():
    with pytest.raises(ValueError):
        weighted_sum([])
    with pytest.raises(ValueError):
        weighted_sum([({"a": np.zeros(1)}, 1), ({"b": np.zeros(1)}, 1)])


# Two rounds on x = [1, -2]: Δ1 = [0.2, -0.4] (sum [0.4, -0.8] over weight 2), Δ2 = [0.01, 0.0].
X0, D1, D2 = [1.0, -2.0], [0.2, -0.4], [0.01, 0.0]


def two_steps(opt):
    g = od(x=X0)
    x1 = opt.step(g, od(x=[2 * d for d in D1]), 2.0)
    state1 = {k: a.copy() for k, a in opt.state_arrays().items()}
    x2 = opt.step(x1, od(x=[4 * d for d in D2]), 4.0)
    return x1["x"], state1, x2["x"], opt.state_arrays()


def expected(second_moment):
    """x1, m1, v1, x2, m2, v2 from the formulas, one value at a time (v starts at τ², m at 0)."""
    out = []
    for x, d1, d2 in zip(X0, D1, D2):
        m1 = B1 * 0.0 + (1 - B1) * d1
        v1 = second_moment(TAU ** 2, d1 * d1)
        x1 = x + LR * m1 / (sqrt(v1) + TAU)
        m2 = B1 * m1 + (1 - B1) * d2
        v2 = second_moment(v1, d2 * d2)
        x2 = x1 + LR * m2 / (sqrt(v2) + TAU)
        out.append((x1, m1, v1, x2, m2, v2))
    return [list(col) for col in zip(*out)]


def adam_v(v, d2):
    return B2 * v + (1 - B2) * d2


def yogi_v(v, d2):
    return v - (1 - B2) * d2 * float(np.sign(v - d2))


def adagrad_v(v, d2):
    return v + d2


@pytest.mark.parametrize("cls, second_moment", [(FedAdam, adam_v), (FedYogi, yogi_v), (FedAdagrad, adagrad_v)])
def test_adaptive_one_and_two_steps_match_the_formulas(cls, second_moment):
    x1, s1, x2, s2 = two_steps(cls(LR, B1, B2, TAU))
    e_x1, e_m1, e_v1, e_x2, e_m2, e_v2 = expected(second_moment)
    np.testing.assert_allclose(x1, e_x1, rtol=1e-6)
    np.testing.assert_allclose(s1["m/x"], e_m1, rtol=1e-6)
    np.testing.assert_allclose(s1["v/x"], e_v1, rtol=1e-6)
    np.testing.assert_allclose(x2, e_x2, rtol=1e-6)
    np.testing.assert_allclose(s2["m/x"], e_m2, rtol=1e-6)
    np.testing.assert_allclose(s2["v/x"], e_v2, rtol=1e-6)
    assert list(s2) == ["m/x", "v/x"] and all(a.dtype == np.float32 for a in s2.values())


def test_adam_first_step_written_out():
    # Δ = 0.2: m = 0.1*0.2 = 0.02; v = 0.99*1e-6 + 0.01*0.04 = 4.0099e-4; x = 1 + 0.1*0.02/(sqrt(v)+1e-3)
    x1, s1, _, _ = two_steps(FedAdam(LR, B1, B2, TAU))
    assert s1["m/x"][0] == pytest.approx(0.02, rel=1e-6)
    assert s1["v/x"][0] == pytest.approx(4.0099e-4, rel=1e-6)
    assert x1[0] == pytest.approx(1 + 0.002 / (sqrt(4.0099e-4) + 1e-3), rel=1e-6)  # ≈ 1.09507


def test_yogi_differs_from_adam_when_v_exceeds_the_squared_delta():
    # Round 2: Δ² = 1e-4 (and 0) < v1 ≈ 4e-4 / 1.6e-3: Adam shrinks v multiplicatively (β2·v + ...),
    # Yogi only by (1−β2)·Δ² - and not at all where Δ = 0.
    _, s_adam, _, adam = two_steps(FedAdam(LR, B1, B2, TAU))
    _, s_yogi, _, yogi = two_steps(FedYogi(LR, B1, B2, TAU))
    v1 = s_yogi["v/x"].astype(np.float64)
    np.testing.assert_allclose(yogi["v/x"], v1 - (1 - B2) * np.array([1e-4, 0.0]), rtol=1e-6)
    assert yogi["v/x"][1] == s_yogi["v/x"][1]  # Δ = 0: Yogi keeps v exactly
    assert np.all(yogi["v/x"] > adam["v/x"])
    assert not np.array_equal(yogi["v/x"], adam["v/x"])


@pytest.mark.parametrize("make", ALL)
def test_a_subset_of_the_adapter_is_stepped_and_the_rest_returned_unchanged(make):
    g = od(**{"l.lora_A": [[1.0, 2.0]], "l.lora_B": [0.5, 0.5], "k.lora_A": [[3.0]], "k.lora_B": [0.0]})
    only_b = od(**{"l.lora_B": [0.2, -0.2], "k.lora_B": [0.4]})
    opt = make()
    new = opt.step(g, only_b, 2.0)
    assert list(new) == list(g)
    for n in ("l.lora_A", "k.lora_A"):
        assert np.array_equal(new[n], g[n])
    assert not np.array_equal(new["l.lora_B"], g["l.lora_B"])
    assert all(n.split("/")[-1] in only_b for n in opt.state_arrays())  # state covers only the trained tensors
    opt.check_state(g, opt.state_arrays())


def bad_aggregates():
    """(label, delta_sum, total_weight) an optimiser over ``x`` (2,) and ``y`` (1,) must refuse."""
    return [
        ("nan", od(x=[np.nan, 0.0], y=[0.0]), 1.0),
        ("inf", od(x=[0.0, 0.0], y=[np.inf]), 1.0),
        ("unknown name", od(x=[0.0, 0.0], z=[0.0]), 1.0),
        ("out of order", od(y=[0.0], x=[0.0, 0.0]), 1.0),
        ("shape", od(x=[0.0], y=[0.0]), 1.0),
        ("empty", od(), 1.0),
        ("zero weight", od(x=[1.0, 1.0], y=[1.0]), 0.0),
        ("nan weight", od(x=[1.0, 1.0], y=[1.0]), float("nan")),
        ("overflow", od(x=[3e38, 3e38], y=[3e38]), 1e-3),  # finite float32, the step is not
        ("other tensors than the state", od(x=[0.1, 0.1]), 1.0),
    ]


@pytest.mark.parametrize("make", ALL)
def test_a_refused_step_changes_neither_the_adapter_nor_the_state(make):
    g = od(x=[1.0, 2.0], y=[3.0])
    opt = make()
    g = opt.step(g, od(x=[0.1, -0.1], y=[0.2]), 1.0)  # some state to keep
    before = {n: a.copy() for n, a in g.items()}
    state = {n: a.copy() for n, a in opt.state_arrays().items()}
    for label, delta_sum, weight in bad_aggregates():
        with pytest.raises(BadAggregate):
            opt.step(g, delta_sum, weight)
        assert all(np.array_equal(g[n], a) for n, a in before.items()), label
        now = opt.state_arrays()
        assert list(now) == list(state) and all(np.array_equal(now[n], a) for n, a in state.items()), label


def test_plain_fedavg_keeps_no_state_and_fedavgm_keeps_the_adapter_names():
    g, d = od(x=[1.0]), od(x=[0.5])
    plain = FedAvg()
    plain.step(g, d, 1.0)
    assert plain.state_arrays() == OrderedDict()
    m = FedAvg(1.0, 0.9)
    m.step(g, d, 1.0)
    assert list(m.state_arrays()) == ["x"]  # old checkpoints' names


def run_config(strategy: str, **extra) -> RunConfig:
    return RunConfig.from_flat({"federation.strategy": strategy, "federation.server-lr": 0.05,
                                "federation.server-beta1": 0.8, "federation.server-beta2": 0.95,
                                "federation.server-tau": 1e-2, **extra})


@pytest.mark.parametrize("strategy", ["fedadam", "fedyogi", "fedadagrad", "fedavgm"])
def test_resume_through_the_checkpoint_is_bit_exact(strategy, tmp_path):
    cfg = run_config(strategy, **({"federation.server-momentum": 0.9} if strategy == "fedavgm" else {}))
    rng = np.random.default_rng(0)
    g0 = od(**{"a.lora_A": rng.normal(size=(2, 3)), "a.lora_B": np.zeros((3, 2)), "b.lora_B": np.zeros(4)})
    deltas = [od(**{"a.lora_B": rng.normal(size=(3, 2)), "b.lora_B": rng.normal(size=4)}) for _ in range(4)]

    def run(opt, g, rounds):
        for d in rounds:
            g = opt.step(g, d, 3.0)
        return g

    straight = make_strategy(cfg.federation)
    g_straight = run(straight, g0, deltas)

    first = make_strategy(cfg.federation)
    g2 = run(first, g0, deltas[:2])
    save_checkpoint(tmp_path, Checkpoint(2, g2, first.state_arrays(), [{"round": r} for r in range(3)],
                                         cfg.to_flat()))
    ckpt = load_checkpoint(tmp_path)
    resumed = make_strategy(cfg.federation)
    resumed.check_state(ckpt.adapter, ckpt.strategy)
    resumed.load_state_arrays(ckpt.strategy)
    g_resumed = run(resumed, ckpt.adapter, deltas[2:])

    assert list(g_resumed) == list(g_straight)
    assert all(np.array_equal(g_resumed[n], a) for n, a in g_straight.items())
    s1, s2 = straight.state_arrays(), resumed.state_arrays()
    assert list(s1) == list(s2) and all(np.array_equal(s1[n], s2[n]) for n in s1)


def test_a_loaded_state_that_does_not_fit_is_refused():
    g = od(x=[1.0, 2.0], y=[3.0])
    adam = FedAdam()
    adam.check_state(g, OrderedDict())  # before the first step: nothing to check
    good = od(**{"m/x": [0.0, 0.0], "v/x": [1e-6, 1e-6]})
    adam.check_state(g, good)
    for bad, why in [
        (od(x=[0.0, 0.0]), "not an m/ or v/"),  # a FedAvgM velocity
        (od(**{"m/x": [0.0, 0.0]}), "m covers"),
        (od(**{"m/x": [0.0], "v/x": [1.0]}), "shape"),
        (od(**{"m/z": [0.0], "v/z": [1.0]}), "names differ"),
        (od(**{"m/x": [np.nan, 0.0], "v/x": [1.0, 1.0]}), "NaN"),
        (od(**{"m/x": [0.0, 0.0], "v/x": [-1.0, 1.0]}), "negative"),
    ]:
        with pytest.raises(AdapterMismatch, match=why):
            adam.check_state(g, bad)
    with pytest.raises(AdapterMismatch, match="keeps no state"):
        FedAvg().check_state(g, od(x=[0.0, 0.0]))
    with pytest.raises(AdapterMismatch, match="shape"):
        FedAvg(1.0, 0.9).check_state(g, od(x=[0.0]))
    FedAvg(1.0, 0.9).check_state(g, od(y=[0.5]))


@pytest.mark.parametrize("strategy, cls", [("fedavg", FedAvg), ("fedavgm", FedAvg), ("fedadam", FedAdam),
                                           ("fedyogi", FedYogi), ("fedadagrad", FedAdagrad)])
def test_make_strategy_picks_the_configured_optimiser(strategy, cls):
    cfg = run_config(strategy, **{"federation.server-momentum": 0.9 if strategy == "fedavgm" else 0.0})
    opt = make_strategy(cfg.federation)
    assert type(opt) is cls and opt.server_lr == 0.05
    if cls is FedAvg:
        assert opt.momentum == (0.9 if strategy == "fedavgm" else 0.0)
    else:
        assert (opt.beta1, opt.beta2, opt.tau) == (0.8, 0.95, 1e-2)


def test_resuming_with_another_strategy_is_refused():
    saved, now = run_config("fedadam").to_flat(), run_config("fedyogi").to_flat()
    with pytest.raises(ConfigError, match="federation.strategy"):
        check_resumable(saved, now, 1)
