"""Comparison point only: the same local work under Flower's built-in (legacy-API) SecAgg+.

Flower's SecAgg+ exists only for the legacy API (``LegacyContext`` + ``NumPyClient`` +
``secaggplus_mod``), so this is a separate Flower app.  Nodes run exactly fedtune's local round
(``fedtune.node.local_round.train_round``: same data, model, DP-SGD and ledger) and hand the delta to
Flower's mod, which masks it.  The server times each fit round; every node appends the size of
each reply it sends (after masking) and its training seconds to ``<output.dir>/flower-node-<node>.jsonl``.
``benchmarks/secagg_overhead.py`` runs this app; it is not part of fedtune.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from pathlib import Path

from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import ndarrays_to_parameters
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import ServerApp

from fedtune.common.config import RunConfig
from fedtune.common.files import atomic_write_text
from fedtune.common.model_cache import ModelCache, ModelSpec
from fedtune.common.secagg.params import degree, threshold
from fedtune.coordinator.grid import reply_bytes
from fedtune.node.local_round import train_round
from fedtune.node.process_cache import NODE_PROCESS


def _adapter_names(cfg: RunConfig) -> list[str]:
    return list(NODE_PROCESS.models.initial_adapter(ModelSpec.of(cfg)))


class LocalNode(NumPyClient):
    def __init__(self, context):
        self.ctx = context

    def fit(self, parameters, config):
        cfg = RunConfig.from_flat(self.ctx.run_config)
        global_arrays = OrderedDict(zip(_adapter_names(cfg), parameters))
        local = train_round(cfg, self.ctx.node_config, int(self.ctx.run_id), int(config["round"]), global_arrays)
        if local.update is None:
            raise RuntimeError(f"{local.data.name}: {local.status}")
        _log(self.ctx, {"round": str(config["round"]), "train_seconds": local.metrics["train_seconds"]})
        return list(local.update.values()), len(local.data.train), {}


def _log(context, record: dict) -> None:
    out = Path(RunConfig.from_flat(context.run_config).output.dir)
    with (out / f"flower-node-{context.node_id}.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def measure_bytes(msg, context, call_next):
    """Outermost mod: sees each reply exactly as it leaves the node (masked by secaggplus_mod)."""
    reply = call_next(msg, context)
    _log(context, {"round": msg.metadata.group_id, "type": msg.metadata.message_type, "bytes": reply_bytes(reply)})
    return reply


client_app = ClientApp(client_fn=lambda context: LocalNode(context).to_client(), mods=[measure_bytes, secaggplus_mod])
server_app = ServerApp()


@server_app.main()
def main(grid, context) -> None:
    cfg = RunConfig.from_flat(context.run_config)
    out = Path(cfg.output.dir)
    initial = ModelCache(capacity=1).initial_adapter(ModelSpec.of(cfg))
    n = cfg.federation.min_nodes
    strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n, min_available_clients=n,
                      on_fit_config_fn=lambda rnd: {"round": rnd},
                      initial_parameters=ndarrays_to_parameters(list(initial.values())))
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=cfg.federation.rounds), strategy=strategy)
    k = degree(n)  # same graph degree and threshold as fedtune's SecAgg+ (+1: Flower counts the node itself)
    secagg = SecAggPlusWorkflow(num_shares=k + 1, reconstruction_threshold=threshold(k, cfg.secagg.dropout) + 1)
    rounds = []

    def timed_fit(grid, ctx) -> None:
        t0 = time.monotonic()
        secagg(grid, ctx)
        rounds.append({"round": len(rounds) + 1, "train_phase_seconds": round(time.monotonic() - t0, 3)})

    DefaultWorkflow(fit_workflow=timed_fit)(grid, legacy)
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rounds))
    atomic_write_text(out / "report.md", "# Flower built-in SecAgg+ (comparison run)\n\nSee metrics.jsonl.\n")
    atomic_write_text(out / "run.json", json.dumps({"config": cfg.to_flat(), "finished": {}}) + "\n")  # fedtune simulate: done
