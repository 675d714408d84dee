import json
from collections import Counter

import numpy as np
import pytest

from fedtune.common.config import DataConfig
from fedtune.common.data import DEPARTMENTS, DataError, Example, generate_triage, load_jsonl, partition, train_eval_split, write_jsonl
from fedtune.node.local_data import node_examples


def test_synthetic_triage_is_deterministic_balanced_and_varied():
    a, b, c = generate_triage(600, seed=1), generate_triage(600, seed=1), generate_triage(600, seed=2)
    assert a == b and a != c
    counts = Counter(e.label for e in a)
    assert set(counts) == set(DEPARTMENTS) and max(counts.values()) - min(counts.values()) <= 1
    notes = {e.messages[-1]["content"] for e in a}
    assert len(notes) == len(a)  # no two records alike
    assert all(e.completion == e.label for e in a)


def test_label_skew_partition_is_disjoint_complete_skewed_and_reproducible():
    ex = generate_triage(1200, seed=0)
    parts = partition(ex, 4, "label-skew", alpha=0.5, seed=3)
    flat = sorted(i for p in parts for i in p)
    assert flat == list(range(len(ex)))  # every record exactly once
    assert parts == partition(ex, 4, "label-skew", alpha=0.5, seed=3)
    # Skew: total-variation distance of each node's label mix from uniform is, on average, far
    # above what an IID split of the same records gives (Dirichlet sizes vary, so a large node
    # can come out near-uniform; the average is the honest statistic).
    def mean_tv(parts):
        uniform = np.full(len(DEPARTMENTS), 1 / len(DEPARTMENTS))
        tvs = []
        for p in parts:
            c = Counter(ex[i].label for i in p)
            tvs.append(0.5 * np.abs(np.array([c[d] for d in DEPARTMENTS]) / len(p) - uniform).sum())
        return float(np.mean(tvs))

    iid_parts = partition(ex, 4, "iid", alpha=0.5, seed=3)
    assert mean_tv(parts) > 0.2 and mean_tv(parts) > 4 * mean_tv(iid_parts)
    assert sorted(len(p) for p in iid_parts) == [300] * 4


def test_synthetic_triage_prompt_follows_list_labels_and_instruction():
    """`data.list-labels` and `data.instruction` shape the demo notes' prompt as they do a classification file's,
    on every node and in the adapter's saved system prompt (what `fedtune generate` uses); the notes stay the same."""
    from fedtune.common.config import RunConfig
    from fedtune.common.data.load import simulation_pool
    from fedtune.coordinator.rounds import adapter_meta

    def system(flat):
        cfg = RunConfig.from_flat({"data.records": 12, **flat})
        pool, labels = simulation_pool(cfg.data)
        prompts = {e.messages[0]["content"] for e in pool}
        assert len(prompts) == 1 and labels == DEPARTMENTS and adapter_meta(cfg)["system"] in prompts
        return prompts.pop(), [e.messages[1:] for e in pool]

    listed, notes = system({})
    assert all(d in listed for d in DEPARTMENTS) and system({"data.list-labels": "yes"})[0] == listed
    unlisted, same_notes = system({"data.list-labels": "no"})
    assert same_notes == notes and not any(d in unlisted for d in DEPARTMENTS)
    assert system({"data.instruction": "Which department?"})[0] == "Which department?"


def test_train_eval_split_is_disjoint():
    items = list(range(50))
    train, held = train_eval_split(items, 0.2, seed=0)
    assert len(held) == 10 and sorted(train + held) == items
    with pytest.raises(ValueError):
        train_eval_split([1], 0.2, 0)


def test_simulated_nodes_get_their_partition_and_a_held_out_split():
    cfg = DataConfig(records=240)
    seen = []
    for pid in range(3):
        ex = node_examples(cfg, {"partition-id": pid, "num-partitions": 3})
        name, train, held = ex.name, ex.train, ex.eval
        assert name == f"hospital-{pid}" and train and held and ex.labels == DEPARTMENTS
        assert not set(map(id, train)) & set(map(id, held))
        seen += train + held
    assert len(seen) == 240


def test_jsonl_chat_and_prompt_completion(tmp_path):
    f = tmp_path / "data.jsonl"
    f.write_text(
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}) + "\n\n"
        + json.dumps({"prompt": "2+2?", "completion": "4", "label": 4}) + "\n"
    )
    a, b = load_jsonl(f)
    assert a == Example(({"role": "user", "content": "hi"},), "hello")
    assert b.messages == ({"role": "user", "content": "2+2?"},) and b.completion == "4" and b.label == "4"
    write_jsonl([a, b], tmp_path / "out.jsonl")
    assert load_jsonl(tmp_path / "out.jsonl") == [a, b]


@pytest.mark.parametrize(
    "line, expected",
    [
        ("{not json", "line 2: bad JSON"),
        ('{"text": "x"}', "line 2: missing field 'prompt'"),
        ('{"prompt": "", "completion": "x"}', "line 2: empty text in field 'prompt'"),
        ('{"prompt": 3, "completion": "x"}', "line 2: field 'prompt' must be text"),
        ('[1, 2]', "line 2: expected a JSON object"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path, line, expected):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"prompt": "ok", "completion": "ok"}\n' + line + "\n")
    with pytest.raises(DataError, match=expected):
        load_jsonl(f)


def test_jsonl_non_utf8_and_missing(tmp_path):
    f = tmp_path / "latin1.jsonl"
    f.write_bytes(b'{"prompt": "caf\xe9", "completion": "x"}\n')
    with pytest.raises(DataError, match="line 1: not valid UTF-8"):
        load_jsonl(f)
    with pytest.raises(DataError, match="data file not found"):
        load_jsonl(tmp_path / "nope.jsonl")


def test_simulation_can_split_a_users_jsonl_and_a_node_can_read_its_own_file(tmp_path):
    from fedtune.common.data import write_jsonl

    path = tmp_path / "notes.jsonl"
    write_jsonl(generate_triage(60, seed=4), path)
    cfg = DataConfig(source=str(path), partition="iid")
    sizes = []
    for i in range(3):
        ex = node_examples(cfg, {"partition-id": i, "num-partitions": 3})
        sizes.append(len(ex.train) + len(ex.eval))
    assert sizes == [20, 20, 20]
    ex = node_examples(DataConfig(), {"data-path": str(path), "name": "St Mary's"})
    assert ex.name == "St Mary's" and len(ex.train) + len(ex.eval) == 60 and len(ex.eval) == 6  # eval-fraction 0.1
    assert ex.labels == ()  # a deployed node only knows labels the run config lists
    with pytest.raises(DataError, match="data file not found"):
        node_examples(DataConfig(), {"data-path": str(tmp_path / "missing.jsonl")})


def test_quantity_skew_partition_sizes_are_skewed_complete_and_reproducible():
    ex = generate_triage(1200, seed=0)
    parts = partition(ex, 6, "quantity-skew", alpha=0.5, seed=4)
    assert parts == partition(ex, 6, "quantity-skew", alpha=0.5, seed=4)
    assert sorted(i for p in parts for i in p) == list(range(1200))  # disjoint and complete
    sizes = np.array([len(p) for p in parts])
    assert sizes.min() >= 1200 // 60
    even = np.array([len(p) for p in partition(ex, 6, "quantity-skew", alpha=1000.0, seed=4)])
    assert sizes.std() > 3 * even.std()  # small alpha: very uneven sizes; large alpha: nearly even
    # labels stay IID: each node's label mix is close to the pool's
    pool = {d: sum(e.label == d for e in ex) / len(ex) for d in DEPARTMENTS}
    big = max(parts, key=len)
    for d in DEPARTMENTS:
        assert abs(sum(ex[i].label == d for i in big) / len(big) - pool[d]) < 0.1


def test_a_simulated_node_s_records_do_not_depend_on_the_nodes_its_process_served_before(tiny_cfg, monkeypatch):
    """60 simulated nodes served by one process in shuffled order, through a cache small enough to evict: node 7's
    records are exactly what a fresh process reads, and the record pool and partition are built once, not per
    message (a message's cost follows its own node, not the population)."""
    import dataclasses

    import numpy as np

    import fedtune.node.local_data as local_data
    from fedtune.node.process_cache import NodeCache

    cfg = dataclasses.replace(tiny_cfg, data=dataclasses.replace(tiny_cfg.data, records=600, partition="iid"))
    node = lambda pid: {"partition-id": pid, "num-partitions": 60}  # noqa: E731
    fresh = NodeCache().data(cfg, node(7))
    local_data.simulated_split.cache_clear()
    pools = []
    real_pool = local_data.simulation_pool
    monkeypatch.setattr(local_data, "simulation_pool", lambda c: pools.append(c) or real_pool(c))
    cache = NodeCache(max_records=50)  # ~5 nodes' worth: most nodes are evicted and read again
    for pid in [*np.random.default_rng(0).permutation(60), 3, 7]:
        cache.data(cfg, node(int(pid)))
    again = cache.data(cfg, node(7))
    assert again.train == fresh.train and again.eval == fresh.eval and again.source == fresh.source
    assert len(pools) == 1


def test_a_process_that_keeps_a_deployed_nodes_records_reads_them_again_once_the_file_changes(tiny_cfg, tmp_path):
    """A deployed node's warm runner serves many messages from one process: records cached there must follow the
    operator's file (and its fingerprint, which names the ledger), not the first version the process read."""
    import os

    from fedtune.node.process_cache import NodeCache

    path = tmp_path / "records.jsonl"
    node = {"data-path": str(path), "state-dir": str(tmp_path / "state"), "min-eval-records": 1}
    write_jsonl(generate_triage(60, seed=1), path)
    cache = NodeCache()
    first = cache.data(tiny_cfg, node)
    assert cache.data(tiny_cfg, node) is first  # unchanged file: kept
    write_jsonl(generate_triage(90, seed=2), path)
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))  # a later edit, even within a tick
    second = cache.data(tiny_cfg, node)
    assert len(second.train) + len(second.eval) == 90 and second.raw_fingerprint != first.raw_fingerprint
