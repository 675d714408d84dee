"""The node's Flower ClientApp: train on local records (DP-SGD by default), evaluate, and release
the LoRA delta only through SecAgg+ (``train.secagg_*`` actions; or in the clear when the run
and the node's policy allow it).  Every privacy decision is the node's own (``policy.py``);
what may leave in a reply is decided in ``replies.py``.

Deployed, Flower starts a fresh process for every message, so this module imports only what the
SecAgg+ stages need (numpy, ``cryptography``); training and evaluation import torch and the model
when a train or evaluate message arrives (``tests/test_light_processes.py`` holds that line)."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedtune.common.config import RunConfig
from fedtune.common.messages import OK, REFUSED, from_record, to_record
from fedtune.common.secagg.params import clip_bound
from fedtune.node import replies
from fedtune.node import secagg as secagg_client
from fedtune.node.identity import node_trust
from fedtune.node.policy import NodePolicy, PolicyRefusal, node_name

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    from fedtune.node import optimizer_state
    from fedtune.node.local_round import train_round

    secagg_client.forget(context.state)  # secrets of an earlier, unfinished round
    try:
        cfg = RunConfig.from_flat(context.run_config)
        policy = NodePolicy.of(context.node_config, cfg)
        if not cfg.secagg.enabled and policy.require_secagg:
            raise PolicyRefusal("this node only sends its update under secure aggregation, but the run has "
                                "secagg.enabled=false (node config: require-secagg)")
        trust = node_trust(context.node_config, policy) if cfg.secagg.enabled else None  # before any training
        rnd = int(msg.content["config"]["round"])
        global_arrays = from_record(msg.content["adapter"])
        local = train_round(cfg, context.node_config, int(context.run_id), rnd, global_arrays,
                            moments=optimizer_state.load(context.state))
        if local.moments is not None:  # kept here for this node's next round; never part of a reply
            optimizer_state.save(context.state, local.moments)
        if local.update is None:
            return replies.result(msg, local.data.name, local.status, local.metrics, accounting=local.accounting)
        if cfg.secagg.enabled:  # keep the delta here; only public keys leave now, a masked vector later
            size = sum(a.size for a in local.update.values())
            outgoing, clipped = secagg_client.start(
                context.state, trust, int(context.run_id), rnd, global_arrays,
                local.update, len(local.data.train), clip_bound(cfg, size), cfg.secagg.max_weight, cfg.lora.freeze_a)
            local.metrics["delta_clipped"] = int(clipped)
        else:
            outgoing = to_record(local.update)
    except PolicyRefusal as exc:  # the run asks for less privacy than this node allows: declined, not failed
        secagg_client.forget(context.state)
        return replies.result(msg, node_name(context.node_config), REFUSED, {}, reason=str(exc))
    except Exception as exc:  # noqa: BLE001 - report to the server, never take the federation down
        secagg_client.forget(context.state)
        return replies.error(msg, exc)
    return replies.result(msg, local.data.name, OK, local.metrics, accounting=local.accounting,
                          **{"secagg" if cfg.secagg.enabled else "delta": outgoing})


def _secagg_stage(stage):
    def handle(msg: Message, context: Context) -> Message:
        try:
            cfg = RunConfig.from_flat(context.run_config)
            trust = node_trust(context.node_config, NodePolicy.of(context.node_config, cfg))
            out = stage(context.state, msg.content["secagg"], trust)
        except Exception as exc:  # noqa: BLE001 - this node leaves the round; the protocol tolerates dropouts
            return replies.error(msg, exc)
        return Message(RecordDict({"masked" if isinstance(out, ArrayRecord) else "secagg": out}), reply_to=msg)
    handle.__name__ = f"secagg_{stage.__name__}"
    return handle


app.train("secagg_share")(_secagg_stage(secagg_client.share))
app.train("secagg_mask")(_secagg_stage(secagg_client.mask))
app.train("secagg_confirm")(_secagg_stage(secagg_client.confirm))
app.train("secagg_unmask")(_secagg_stage(secagg_client.unmask))


@app.evaluate()
def evaluate_adapter(msg: Message, context: Context) -> Message:
    from fedtune.node.local_eval import evaluate_round

    try:
        cfg = RunConfig.from_flat(context.run_config)
        name, metrics = evaluate_round(cfg, context.node_config, int(context.run_id),
                                       from_record(msg.content["adapter"]))
    except PolicyRefusal as exc:
        return replies.result(msg, node_name(context.node_config), REFUSED, {}, reason=str(exc))
    except Exception as exc:  # noqa: BLE001
        return replies.error(msg, exc)
    return replies.result(msg, name, OK, metrics)
