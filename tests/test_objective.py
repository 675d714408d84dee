"""The per-sample objective: each sample's loss is the mean over its own target tokens."""

import torch
import torch.nn.functional as F

from fedtune.common.adapters import adapter_parameters
from fedtune.common.data import Example
from fedtune.common.objective import per_sample_forward

EXAMPLES = [
    Example(({"role": "user", "content": "short question"},), "a long answer with many target tokens in it"),
    Example(({"role": "user", "content": "another, rather longer question about something"},), "no"),
    Example(({"role": "user", "content": "third"},), "maybe so"),
]


def _perturb(model):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in adapter_parameters(model).values():
            p.add_(0.2 * torch.randn(p.shape, generator=g))


def test_per_sample_loss_matches_hand_computation(tiny_peft):
    model, _, enc = tiny_peft
    _perturb(model)
    batch = enc.collate(enc.encode_all(EXAMPLES))
    fwd = per_sample_forward(model, batch, "fp32")
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids).logits
    logp = F.log_softmax(logits[:, :-1].float(), -1)
    for i in range(len(EXAMPLES)):
        pos = batch.target_mask[i, 1:].nonzero().flatten()  # predictions of target tokens
        tok = batch.input_ids[i, pos + 1]
        expected = -logp[i, pos, tok].mean()
        torch.testing.assert_close(fwd.losses[i].detach(), expected, rtol=1e-5, atol=1e-5)


def test_a_sample_scores_the_same_alone_and_inside_a_padded_batch(tiny_peft):
    model, _, enc = tiny_peft
    _perturb(model)
    items = enc.encode_all(EXAMPLES)
    together = per_sample_forward(model, enc.collate(items), "fp32").losses.detach()
    for i, item in enumerate(items):
        alone = per_sample_forward(model, enc.collate([item]), "fp32").losses.detach()
        torch.testing.assert_close(together[i], alone[0], rtol=1e-4, atol=1e-4)


def _grads(model, loss):
    params = list(adapter_parameters(model).values())
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])


def _hf_batch_token_mean(model, batch):
    """What HF's ``labels=`` computes: one mean over all target tokens of the batch."""
    labels = torch.where(batch.target_mask, batch.input_ids, torch.full_like(batch.input_ids, -100))
    return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                 position_ids=batch.position_ids, labels=labels).loss


def _decomposes_per_sample(model, enc, loss_fn) -> bool:
    """Does grad(batch loss) == mean_i grad(loss of sample i alone)?  DP-SGD's sensitivity needs it."""
    items = enc.encode_all(EXAMPLES)
    batch_grad = _grads(model, loss_fn(model, enc.collate(items)))
    per_sample = torch.stack([_grads(model, loss_fn(model, enc.collate([it]))) for it in items])
    return torch.allclose(batch_grad, per_sample.mean(0), rtol=1e-3, atol=1e-6)


def test_batch_gradient_is_the_mean_of_per_sample_gradients(tiny_peft):
    model, _, enc = tiny_peft
    _perturb(model)
    ours = lambda m, b: per_sample_forward(m, b, "fp32").losses.mean()  # noqa: E731
    assert _decomposes_per_sample(model, enc, ours)
    # The same check catches the HF batch-token mean: samples with more target tokens weigh more.
    assert not _decomposes_per_sample(model, enc, _hf_batch_token_mean)


# --- the label-choice objective (train.objective = labels) --------------------------------------

LABELS = ("yes", "no", "maybe so")
LABELLED = [Example(({"role": "user", "content": q},), a, label=a) for q, a in
            [("is it raining", "yes"), ("a much longer question about whether the sun will shine", "no"),
             ("third", "maybe so")]]


def test_label_choice_loss_is_the_cross_entropy_of_the_gold_label_among_all_labels(tiny_peft):
    from fedtune.common.label_scoring import label_log_likelihoods, label_targets
    from fedtune.common.objective import objective_for

    model, _, enc = tiny_peft
    _perturb(model)
    items = enc.encode_all(LABELLED)
    losses = objective_for("labels", enc, items, LABELS, "fp32")(model, torch.arange(3).numpy()).detach()
    scores = label_log_likelihoods(model, enc, [e.prompt_ids for e in items], label_targets(enc, LABELS))
    expected = -torch.log_softmax(scores, 1)[torch.arange(3), torch.tensor([0, 1, 2])]
    torch.testing.assert_close(losses, expected, rtol=1e-5, atol=1e-5)


def test_label_choice_batch_gradient_is_the_mean_of_per_sample_gradients(tiny_peft):
    """DP-SGD's sensitivity argument, for the packed label-scoring pass: no row sees another."""
    from fedtune.common.objective import objective_for

    model, _, enc = tiny_peft
    _perturb(model)
    items = enc.encode_all(LABELLED)
    objective = objective_for("labels", enc, items, LABELS, "fp32")
    batch_grad = _grads(model, objective(model, torch.arange(3).numpy()).mean())
    alone = torch.stack([_grads(model, objective(model, torch.tensor([i]).numpy()).mean()) for i in range(3)])
    torch.testing.assert_close(batch_grad, alone.mean(0), rtol=1e-3, atol=1e-6)


def test_label_objective_is_refused_for_free_text_and_auto_falls_back_to_tokens(tiny_peft):
    import pytest

    from fedtune.common.objective import objective_for

    model, _, enc = tiny_peft
    free_text = enc.encode_all(EXAMPLES)  # answers that are not labels
    with pytest.raises(ValueError, match="train.objective = 'labels' needs a label set"):
        objective_for("labels", enc, free_text, LABELS, "fp32")
    auto = objective_for("auto", enc, free_text, LABELS, "fp32")(model, torch.arange(3).numpy())
    tokens = per_sample_forward(model, enc.collate(free_text), "fp32").losses
    torch.testing.assert_close(auto, tokens)


def test_auto_objective_scores_labels_only_while_packing_them_costs_no_more_than_the_prompt(tiny_peft):
    from fedtune.common.objective import objective_for

    model, _, enc = tiny_peft
    items = enc.encode_all(LABELLED)
    idx = torch.arange(3).numpy()
    labels_loss = objective_for("labels", enc, items, LABELS, "fp32")(model, idx)
    tokens_loss = per_sample_forward(model, enc.collate(items), "fp32").losses
    torch.testing.assert_close(objective_for("auto", enc, items, LABELS, "fp32")(model, idx), labels_loss)
    many = LABELS + tuple(f"extra label number {i}" for i in range(40))  # far longer than any prompt
    torch.testing.assert_close(objective_for("auto", enc, items, many, "fp32")(model, idx), tokens_loss)
