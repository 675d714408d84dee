"""The node's Flower ClientApp: train on local records, evaluate, send back only the LoRA delta."""

from __future__ import annotations

import zlib

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from .adapters import delta, get_adapter_arrays, set_adapter_arrays
from .config import RunConfig
from .evaluation import evaluate
from .messages import error_reply, from_record, to_record
from .node import cached_model, node_data
from .training import train_local

app = ClientApp()


def _prepare(msg: Message, context: Context):
    cfg = RunConfig.from_flat(context.run_config)
    model, _, encoder = cached_model(cfg.model, cfg.lora, cfg.train.seed)
    data = node_data(cfg, context.node_config)
    global_arrays = from_record(msg.content["adapter"])
    set_adapter_arrays(model, global_arrays)  # refuses anything that is not exactly our adapter
    return cfg, model, encoder, data, global_arrays


@app.train()
def train(msg: Message, context: Context) -> Message:
    try:
        cfg, model, encoder, data, global_arrays = _prepare(msg, context)
        rnd = int(msg.content["config"]["round"])
        seed = int(np.random.SeedSequence([cfg.train.seed, rnd, zlib.crc32(data.name.encode())]).generate_state(1)[0])
        result = train_local(model, encoder, data.train, cfg.train, cfg.model.precision, seed)
        update = to_record(delta(get_adapter_arrays(model), global_arrays))
    except Exception as exc:  # noqa: BLE001 - report to the server, never take the federation down
        return error_reply(msg, exc)
    metrics = MetricRecord({
        "train_loss": result.loss, "examples": len(data.train), "steps": result.steps,
        "train_seconds": result.seconds, "bytes_sent": update.count_bytes(),
    })
    return Message(RecordDict({"delta": update, "metrics": metrics, "info": ConfigRecord({"name": data.name})}), reply_to=msg)


@app.evaluate()
def evaluate_adapter(msg: Message, context: Context) -> Message:
    try:
        cfg, model, encoder, data, _ = _prepare(msg, context)
        result = evaluate(model, encoder, data.eval, cfg.train.eval_batch_size, cfg.model.precision)
    except Exception as exc:  # noqa: BLE001
        return error_reply(msg, exc)
    metrics = MetricRecord({"eval_loss": result.loss, "eval_accuracy": result.accuracy, "eval_examples": result.examples})
    return Message(RecordDict({"metrics": metrics, "info": ConfigRecord({"name": data.name})}), reply_to=msg)
