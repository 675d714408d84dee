"""What a node process keeps between Flower messages: its model and its encoded records.

Flower calls the ClientApp's handlers as plain functions, so the reusable state of a node
process lives in one object here, ``NODE_PROCESS``, used only by node code.  Every call hands
back the model holding exactly the adapter the caller names (``common/model_cache.py``), so an
adapter trained for one message (or one simulated node) never leaks into the next.  Encoded
records are immutable; they are cached per (run config, node config, the data file's size and
mtime), bounded by the number of records held (not of nodes), so a process serving a 1,000-node
simulation keeps every node it served instead of re-reading and re-encoding each one per message,
and a deployed node's warm runner reads its file again once its operator changes it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

import numpy as np

from fedtune.common.config import RunConfig
from fedtune.common.model_cache import ModelCache, ModelSpec
from fedtune.node.hardware import on_this_node
from fedtune.node.local_data import NodeData, data_stamp, load_node_data


def _records(data: NodeData) -> int:
    return len(data.train) + len(data.eval)


class NodeCache:
    def __init__(self, models: ModelCache | None = None, max_records: int = 200_000):
        self.models = models or ModelCache()
        self._max = max_records  # encoded records kept (~1 kB each), least recently used dropped first
        self._held = 0
        self._data: "OrderedDict[tuple, NodeData]" = OrderedDict()

    def data(self, cfg: RunConfig, node_config: Mapping[str, object]) -> NodeData:
        key = (cfg, tuple(sorted(node_config.items())), data_stamp(node_config))
        if key not in self._data:
            self._data[key] = load_node_data(cfg, node_config, self.models.encoder(ModelSpec.of(cfg)))
            self._held += _records(self._data[key])
            while self._held > self._max and len(self._data) > 1:
                self._held -= _records(self._data.popitem(last=False)[1])
        self._data.move_to_end(key)
        return self._data[key]

    def prepare(self, cfg: RunConfig, node_config: Mapping[str, object], adapter: Mapping[str, np.ndarray]):
        """(model holding ``adapter``, on the device the node config names, if any; encoder; this node's data)."""
        cfg = on_this_node(cfg, node_config)
        data = self.data(cfg, node_config)
        model, encoder = self.models.holding(ModelSpec.of(cfg), adapter)
        return model, encoder, data


NODE_PROCESS = NodeCache()  # this process's node state; the coordinator and the lab keep their own
