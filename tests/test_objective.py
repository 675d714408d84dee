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
