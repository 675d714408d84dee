"""The node's Flower ClientApp: train on local records (DP-SGD by default), evaluate, and release
the LoRA delta only through SecAgg+ (``train.secagg_*`` actions; or in the clear when
``secagg.enabled=false``).  The node's privacy budget and ledger are its own (``privacy/guard.py``)."""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedtune.common.config import RunConfig
from fedtune.common.evaluation import evaluate
from fedtune.common.messages import error_reply, from_record, to_record
from fedtune.common.secagg.params import clip_bound
from fedtune.node import secagg as secagg_client
from fedtune.node.local_round import train_round
from fedtune.node.process_cache import NODE_PROCESS

app = ClientApp()


def _reply(msg: Message, name: str, status: str, metrics: dict, **records) -> Message:
    content = RecordDict({"metrics": MetricRecord(metrics), "info": ConfigRecord({"name": name, "status": status}),
                          **records})
    return Message(content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    secagg_client.forget(context.state)  # secrets of an earlier, unfinished round
    try:
        cfg = RunConfig.from_flat(context.run_config)
        if not cfg.secagg.enabled and secagg_client.require_secagg(context.node_config):
            raise PermissionError("this node only sends its update under secure aggregation, but the run has "
                                  "secagg.enabled=false (node config: require-secagg)")
        rnd = int(msg.content["config"]["round"])
        global_arrays = from_record(msg.content["adapter"])
        local = train_round(cfg, context.node_config, int(context.run_id), rnd, global_arrays)
        if local.update is None:
            return _reply(msg, local.data.name, local.status, local.metrics)
        if cfg.secagg.enabled:  # keep the delta here; only public keys leave now, a masked vector later
            size = sum(a.size for a in global_arrays.values())
            outgoing, clipped = secagg_client.start(context.state, rnd, global_arrays, local.update,
                                                    len(local.data.train), clip_bound(cfg, size))
            local.metrics["delta_clipped"] = int(clipped)
        else:
            outgoing = to_record(local.update)
    except Exception as exc:  # noqa: BLE001 - report to the server, never take the federation down
        secagg_client.forget(context.state)
        return error_reply(msg, exc)
    return _reply(msg, local.data.name, "ok", local.metrics, **{"secagg" if cfg.secagg.enabled else "delta": outgoing})


def _secagg_stage(stage):
    def handle(msg: Message, context: Context) -> Message:
        try:
            out = stage(context.state, msg.content["secagg"])
        except Exception as exc:  # noqa: BLE001 - this node leaves the round; the protocol tolerates dropouts
            return error_reply(msg, exc)
        return Message(RecordDict({"masked" if isinstance(out, ArrayRecord) else "secagg": out}), reply_to=msg)
    handle.__name__ = f"secagg_{stage.__name__}"
    return handle


app.train("secagg_share")(_secagg_stage(secagg_client.share))
app.train("secagg_mask")(_secagg_stage(secagg_client.mask))
app.train("secagg_unmask")(_secagg_stage(secagg_client.unmask))


@app.evaluate()
def evaluate_adapter(msg: Message, context: Context) -> Message:
    try:
        cfg = RunConfig.from_flat(context.run_config)
        model, encoder, data = NODE_PROCESS.prepare(cfg, context.node_config, from_record(msg.content["adapter"]))
        result = evaluate(model, encoder, data.eval, cfg.train.eval_batch_size, cfg.model.precision,
                          data.labels, cfg.train.eval_max_new_tokens)
    except Exception as exc:  # noqa: BLE001
        return error_reply(msg, exc)
    return _reply(msg, data.name, "ok", result.to_metrics())
