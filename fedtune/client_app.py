"""The node's Flower ClientApp: train on local records (DP-SGD by default), evaluate, and send
back only the LoRA delta.  The node's privacy budget and ledger are its own (privacy/guard.py)."""

from __future__ import annotations

import zlib

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from .adapters import delta, get_adapter_arrays, set_adapter_arrays
from .config import RunConfig
from .evaluation import evaluate
from .messages import error_reply, from_record, to_record
from .node import cached_model, node_data
from .privacy import DPStepper, plan_round
from .privacy.guard import BUDGET_EXHAUSTED
from .secagg import client as secagg_client
from .secagg.params import clip_bound
from .training import train_local

app = ClientApp()


def _prepare(msg: Message, context: Context):
    cfg = RunConfig.from_flat(context.run_config)
    model, _, encoder = cached_model(cfg.model, cfg.lora, cfg.train.seed)
    data = node_data(cfg, context.node_config)
    global_arrays = from_record(msg.content["adapter"])
    set_adapter_arrays(model, global_arrays)  # refuses anything that is not exactly our adapter
    return cfg, model, encoder, data, global_arrays


def _reply(msg: Message, name: str, status: str, metrics: dict, **records) -> Message:
    content = RecordDict({"metrics": MetricRecord(metrics), "info": ConfigRecord({"name": name, "status": status}),
                          **records})
    return Message(content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    secagg_client.forget(context.state)  # secrets of an earlier, unfinished round
    try:
        cfg, model, encoder, data, global_arrays = _prepare(msg, context)
        rnd = int(msg.content["config"]["round"])
        metrics: dict = {"examples": len(data.train), "num_records": len(data.train)}
        stepper = privacy = None
        if cfg.privacy.enabled:
            privacy = plan_round(cfg, context.node_config, data.name, data.fingerprint, len(data.train),
                                 int(context.run_id))
            metrics.update(delta=privacy.ledger.delta, max_epsilon=privacy.max_epsilon,
                           noise_multiplier=privacy.plan.noise_multiplier, sample_rate=privacy.plan.sample_rate)
            if not privacy.allowed:  # the node's own budget decides; nothing is trained or sent
                metrics.update(epsilon=privacy.epsilon_before, epsilon_if_trained=privacy.epsilon_after)
                return _reply(msg, data.name, BUDGET_EXHAUSTED, metrics)
            stepper = DPStepper(model, len(data.train), cfg.train, privacy.plan, cfg.privacy.clipping)
        seed = int(np.random.SeedSequence([cfg.train.seed, rnd, zlib.crc32(data.name.encode())]).generate_state(1)[0])
        result = train_local(model, encoder, data.train, cfg.train, cfg.model.precision, seed, stepper)
        update = delta(get_adapter_arrays(model), global_arrays)
        if cfg.secagg.enabled:  # keep the delta here; only public keys leave now, a masked vector later
            outgoing, clipped = secagg_client.start(context.state, rnd, global_arrays, update, len(data.train),
                                                    clip_bound(cfg, sum(a.size for a in global_arrays.values())))
            metrics["delta_clipped"] = int(clipped)
        else:
            outgoing = to_record(update)
        if privacy is not None:  # persist the spent budget before anything derived from the data leaves
            metrics["epsilon"] = privacy.ledger.record(privacy.plan.segment, round=rnd, run_id=int(context.run_id))
    except Exception as exc:  # noqa: BLE001 - report to the server, never take the federation down
        secagg_client.forget(context.state)
        return error_reply(msg, exc)
    metrics.update(train_loss=result.loss, steps=result.steps, samples=result.samples, train_seconds=result.seconds)
    return _reply(msg, data.name, "ok", metrics, **{"secagg" if cfg.secagg.enabled else "delta": outgoing})


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
        cfg, model, encoder, data, _ = _prepare(msg, context)
        result = evaluate(model, encoder, data.eval, cfg.train.eval_batch_size, cfg.model.precision)
    except Exception as exc:  # noqa: BLE001
        return error_reply(msg, exc)
    metrics = {"eval_loss": result.loss, "eval_accuracy": result.accuracy, "eval_examples": result.examples}
    return _reply(msg, data.name, "ok", metrics)
