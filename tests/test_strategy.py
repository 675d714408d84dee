import numpy as np
import pytest

from fedtune.coordinator.strategy import FedAvg, weighted_sum


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
