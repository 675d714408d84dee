"""Named arrays over Flower's Message API (``fedtune/common/messages.py``): packed into one vector and its
layout, exact both ways, and a malformed packed record is refused with a reason."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from fedtune.common.messages import PACKED_LAYOUT, PACKED_VALUES, from_record, to_record


def _adapter(tensors: int = 112, seed: int = 0) -> "OrderedDict[str, np.ndarray]":
    """LoRA-shaped float32 tensors (A: r × in, B: out × r), as many as 8 layers × 7 modules × A, B."""
    rng = np.random.default_rng(seed)
    return OrderedDict((f"model.layers.{i // 14}.m{i % 7}.lora_{'AB'[i % 2]}.weight",
                        rng.standard_normal((8, 576) if i % 2 == 0 else (576, 8)).astype(np.float32))
                       for i in range(tensors))


def test_named_arrays_come_back_exactly_in_order_with_their_shapes_and_dtype():
    arrays = _adapter(6)
    arrays["empty"] = np.zeros((0, 3), np.float32)
    back = from_record(to_record(arrays))
    assert list(back) == list(arrays)
    for name, a in arrays.items():
        assert back[name].shape == a.shape and back[name].dtype == a.dtype
        np.testing.assert_array_equal(back[name], a)
    assert list(from_record(to_record({}))) == []


def test_arrays_of_different_dtypes_travel_one_by_one_and_still_come_back():
    arrays = OrderedDict(a=np.arange(3, dtype=np.float32), b=np.arange(4, dtype=np.int64))
    record = to_record(arrays)
    assert list(record.keys()) == ["a", "b"]
    assert {n: a.dtype for n, a in from_record(record).items()} == {"a": np.float32, "b": np.int64}


def test_an_adapter_travels_as_a_handful_of_flower_objects_not_two_per_tensor(monkeypatch):
    """Deployed, every Flower object of a message is one HTTPS request per hop."""
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_task_id", "_run_id", "_node_id"):  # Flower's process-wide task identity, restored afterwards
        monkeypatch.setattr(TaskIdentity, name, 1)

    def objects(record: ArrayRecord) -> int:
        msg = Message(RecordDict({"adapter": record, "config": ConfigRecord({"round": 1})}), dst_node_id=2,
                      message_type="train")
        return len(get_all_nested_objects(msg))

    arrays = _adapter(112)
    per_tensor = ArrayRecord(OrderedDict((n, Array(a)) for n, a in arrays.items()))
    assert objects(per_tensor) > 224 and objects(to_record(arrays)) <= 8


@pytest.mark.parametrize("layout, values, why", [
    (b"not json", np.zeros(3, np.float32), "malformed layout: Expecting value"),
    (b'[["a",[2]],["b",[2]]]', np.zeros(3, np.float32), "does not fit its 3 values"),
    (b'[["a",[1]],["a",[2]]]', np.zeros(3, np.float32), "repeats a name"),
    (b'[["a",[-1]],["b",[4]]]', np.zeros(3, np.float32), "is not \\[name"),
    (b'[["a",[3]]]', np.zeros((1, 3), np.float32), "does not fit"),
    (b'[[1,[3]]]', np.zeros(3, np.float32), "is not \\[name"),
    (b'[["a",[4294967296,4294967296]],["b",[3]]]', np.zeros(3, np.float32), "does not fit"),  # 2^64 + 3 values
    (b'[["a",[Infinity]]]', np.zeros(3, np.float32), "Infinity is not a number"),
    (b"[" * 100_000, np.zeros(3, np.float32), "malformed layout"),  # nested past the JSON parser's recursion limit
    (b'[[[1],[1]]]', np.zeros(1, np.float32), "is not \\[name"),
    (b'[["a",[1.9]]]', np.zeros(1, np.float32), "is not \\[name"),
    (b'["a1"]', np.zeros(1, np.float32), "is not \\[name"),
    (b'[["a",[true]]]', np.zeros(1, np.float32), "is not \\[name"),
    (b'[["a",[0,1000000000000000000000000000000]]]', np.zeros(0, np.float32), "is not \\[name"),
    (b'{"a":[3]}', np.zeros(3, np.float32), "not a list"),
    (b"[" + b'["a",[0]],' * 70_000 + b'["b",[0]]]', np.zeros(0, np.float32), "not a list of at most"),
])
def test_a_malformed_packed_record_is_refused_with_what_is_wrong(layout, values, why):
    record = ArrayRecord(OrderedDict([(PACKED_LAYOUT, Array(np.frombuffer(layout, np.uint8))),
                                      (PACKED_VALUES, Array(values))]))
    with pytest.raises(ValueError, match=why):
        from_record(record)
