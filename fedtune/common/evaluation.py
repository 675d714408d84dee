"""Held-out evaluation: loss and perplexity of the reference answers, and metrics of the model's
answers: normalised exact match, ROUGE-L and, where the task has a label set, per-label counts
for macro-F1.  A labelled task's answer is the likeliest allowed label (``label_scoring``: always
valid, one pass per batch of records); a free-text answer is generated greedily.

Node results travel as flat metrics (``EvalResult.to_metrics``) and are pooled by
``combine_metrics``, the one function the server, the baselines and the central evaluation use:
accuracy/ROUGE-L/loss are averaged weighted by records, perplexity comes from the summed token
log-likelihoods, macro-F1 from the summed per-label counts (i.e. of the pooled predictions).

For free text, generation is only run where it is needed: the teacher-forced pass that gives the loss also
shows, per record, whether the argmax at every reference position (answer + end-of-turn) is the
reference token; greedy decoding of such a record emits exactly the reference and stops, so its
answer is known without generating.  The other records are generated (batched, KV cache).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from fedtune.common.data.prompts import Encoded, PromptEncoder
from fedtune.common.label_scoring import label_indices, label_log_likelihoods, label_targets, records_per_pass
from fedtune.common.metrics import LabelCounts, exact_match, perplexity, rouge_l
from fedtune.common.model import autocast, model_device
from fedtune.common.objective import per_sample_forward

@dataclass
class EvalResult:
    examples: int
    loss: float  # mean per-sample loss (mean over each answer's tokens)
    token_nll: float  # summed over all reference tokens (perplexity)
    tokens: int
    accuracy: float  # normalised exact match of the generated answers
    rouge_l: float  # mean ROUGE-L F1 of the generated answers
    label_counts: LabelCounts | None  # when every reference is one of the task's labels
    predictions: list[str]

    @property
    def perplexity(self) -> float:
        return perplexity(self.token_nll, self.tokens)

    def to_metrics(self, prefix: str = "eval_") -> dict:
        m = {"loss": self.loss, "accuracy": self.accuracy, "examples": self.examples, "rouge_l": self.rouge_l,
             "token_nll": self.token_nll, "tokens": self.tokens, "perplexity": self.perplexity}
        if self.label_counts is not None:
            m.update(label_tp=self.label_counts.tp, label_fp=self.label_counts.fp, label_fn=self.label_counts.fn)
        return {prefix + k: v for k, v in m.items()}


def combine_metrics(entries: Sequence[Mapping], prefix: str = "eval_") -> dict:
    """Pool per-node evaluation metrics into the run's figures (None where nobody reported)."""
    have = [e for e in entries if e.get(prefix + "examples")]
    n = sum(int(e[prefix + "examples"]) for e in have)

    def weighted(key: str) -> float | None:
        pairs = [(float(e[prefix + key]), int(e[prefix + "examples"])) for e in have if prefix + key in e]
        total = sum(w for _, w in pairs)
        return sum(v * w for v, w in pairs) / total if total else None

    tokens = sum(int(e.get(prefix + "tokens", 0)) for e in have)
    out = {prefix + "accuracy": weighted("accuracy"), prefix + "loss": weighted("loss"),
           prefix + "rouge_l": weighted("rouge_l"), prefix + "examples": n,
           prefix + "perplexity": perplexity(sum(float(e[prefix + "token_nll"]) for e in have), tokens)
           if tokens and all(prefix + "token_nll" in e for e in have) else None,
           prefix + "macro_f1": None}
    counts = [LabelCounts(list(e[prefix + "label_tp"]), list(e[prefix + "label_fp"]), list(e[prefix + "label_fn"]))
              for e in have if prefix + "label_tp" in e]
    if have and len(counts) == len(have) and len({len(c.tp) for c in counts}) == 1:
        out[prefix + "macro_f1"] = sum(counts[1:], counts[0]).macro_f1()
    return out


@torch.no_grad()
def generate_answers(model, encoder: PromptEncoder, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                     precision: str = "fp32") -> list[str]:
    """Greedy answers for a batch of tokenised prompts (left-padded; stops at end-of-turn)."""
    length = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), length), encoder.pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, length - len(p):] = torch.tensor(list(p))
        attn[i, length - len(p):] = 1
    where = model_device(model)
    with autocast(precision, where.type):
        out = model.generate(
            input_ids=ids.to(where), attention_mask=attn.to(where), max_new_tokens=max_new_tokens,
            do_sample=False, eos_token_id=encoder.end_id, pad_token_id=encoder.pad_id, use_cache=True,
        )
    answers = []
    for row in out[:, length:].tolist():
        if encoder.end_id in row:
            row = row[: row.index(encoder.end_id)]
        answers.append(encoder.tok.decode(row, skip_special_tokens=True).strip())
    return answers


@dataclass
class _Scored:
    """Per-record loss (mean over the reference's tokens), summed NLL, token count, prediction."""

    losses: list[float]
    nll: float
    tokens: int
    predictions: list[str]


def use_label_scoring(method: str, possible: bool) -> bool:
    """``labels`` = score labels (refused unless every reference is one); ``auto`` = where that is possible."""
    if method == "labels" and not possible:
        raise ValueError("train.eval-method = 'labels' needs a label set and every held-out answer to be one of "
                         "its labels; use eval-method = 'generate' (or 'auto') for free-text answers")
    return possible and method != "generate"


@torch.no_grad()
def evaluate(model, encoder: PromptEncoder, data: Sequence[Encoded], batch_size: int, precision: str,
             labels: Sequence[str] = (), max_new_tokens: int = 64, method: str = "auto") -> EvalResult:
    if not data:
        raise ValueError("no evaluation records")
    model.eval()
    references = [encoder.reference(e) for e in data]
    gold = label_indices(references, labels)
    labelled = gold is not None  # every reference is one of the labels
    if use_label_scoring(method, labelled):
        scored = _score_labels(model, encoder, data, gold, labels, batch_size, precision)
    else:
        scored = _teacher_forced_and_generated(model, encoder, data, references, batch_size, precision,
                                               max_new_tokens)
    predictions = scored.predictions
    label_counts = (LabelCounts.from_predictions([labels[g] for g in gold], predictions, list(labels))
                    if labelled else None)
    return EvalResult(
        examples=len(data), loss=sum(scored.losses) / len(data), token_nll=scored.nll, tokens=scored.tokens,
        accuracy=sum(exact_match(p, r) for p, r in zip(predictions, references)) / len(data),
        rouge_l=sum(rouge_l(p, r) for p, r in zip(predictions, references)) / len(data),
        label_counts=label_counts, predictions=predictions,
    )


def _score_labels(model, encoder, data, gold: Sequence[int], labels: Sequence[str], batch_size: int,
                  precision: str) -> _Scored:
    """Every label's likelihood per record; the prediction is the likeliest, the loss is the gold label's."""
    targets = label_targets(encoder, labels)
    out = _Scored([], 0.0, 0, [])
    step = records_per_pass(targets, batch_size)
    for start in range(0, len(data), step):
        scores = label_log_likelihoods(model, encoder, [e.prompt_ids for e in data[start:start + step]], targets,
                                       precision)
        for row, g in zip(scores, gold[start:start + step]):
            n = len(targets[g])
            out.losses.append(-float(row[g]) / n)
            out.nll -= float(row[g])
            out.tokens += n
            out.predictions.append(labels[int(row.argmax())])
    return out


def _teacher_forced_and_generated(model, encoder, data, references, batch_size, precision,
                                  max_new_tokens) -> _Scored:
    """Loss from one teacher-forced pass; answers generated greedily for the records it does not settle."""
    losses, nll, tokens = [0.0] * len(data), 0.0, 0
    predictions: list[str] = [""] * len(data)
    # Sort by length so batches pad little; the result does not depend on the order.
    order = sorted(range(len(data)), key=lambda i: len(data[i].prompt_ids) + len(data[i].target_ids))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        items = [data[i] for i in idx]
        batch = encoder.collate(items).to(model_device(model))
        fwd = per_sample_forward(model, batch, precision)
        counts = batch.target_mask.sum(1)
        for i, loss in zip(idx, fwd.losses.tolist()):
            losses[i] = loss
        nll += (fwd.losses * counts).sum().item()
        tokens += int(counts.sum().item())
        known = fwd.greedy_match.tolist()
        for i in (i for i, k in zip(idx, known) if k):  # greedy decoding would emit exactly the reference
            predictions[i] = references[i]
        todo = [(i, e) for i, e, k in zip(idx, items, known) if not k]
        if todo:  # the budget is the configured one: never a function of the (held-out) references
            answers = generate_answers(model, encoder, [e.prompt_ids for _, e in todo], max_new_tokens, precision)
            for (i, _), answer in zip(todo, answers):
                predictions[i] = answer
    return _Scored(losses, nll, tokens, predictions)


def generate(model, encoder: PromptEncoder, messages: Sequence[dict], max_new_tokens: int = 64) -> str:
    """Greedy completion of a chat prompt (used by ``fedtune generate``)."""
    return generate_answers(model, encoder, [encoder.encode_prompt(messages)], max_new_tokens)[0]
