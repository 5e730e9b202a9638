import copy

import pytest
import torch
import torch.nn.functional as F

from tests.test_losses import TinyClassifier, make_batch
from trainables.tricks.adversarial import AWP, FGM, PGD, FreeLB
from trainables.hooks import TrainState

EPS = 0.5


def setup(seed=0):
    torch.manual_seed(seed)
    model = TinyClassifier()
    return TrainState(model=model, optimizer=None, loss_fn=F.cross_entropy), make_batch()


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def clean_then(hook, state, batch):
    """Clean backward, then the hook; returns (clean grads, grads after the hook)."""
    state.model.zero_grad()
    state.backward(state.compute_loss(batch))
    clean = grads(state.model)
    hook.after_backward(state, batch)
    return clean, grads(state.model)


def record_losses(state, probe):
    """Wrap compute_loss so that ``probe(model)`` is recorded at every adversarial pass."""
    seen, inner = [], state.compute_loss
    state.compute_loss = lambda batch: (seen.append(probe(state.model)), inner(batch))[1]
    return seen


@pytest.mark.parametrize("hook", [FGM(EPS), PGD(EPS, 3), FreeLB(EPS, 3), AWP(1.0, 0.05)], ids=type)
def test_weights_restored_bit_exactly_and_gradients_change(hook):
    state, batch = setup()
    before = copy.deepcopy(state.model.state_dict())
    clean, after = clean_then(hook, state, batch)
    assert all(torch.equal(before[k], v) for k, v in state.model.state_dict().items())
    assert not torch.allclose(clean["head.weight"], after["head.weight"])
    assert not torch.allclose(clean["body.weight"], after["body.weight"])


def test_fgm_adds_gradient_at_normalised_step():
    state, batch = setup()
    reference = copy.deepcopy(state.model)
    clean, after = clean_then(FGM(EPS), state, batch)
    rows = batch["input_ids"].unique()
    g = clean["embed.weight"][rows]
    with torch.no_grad():
        reference.embed.weight[rows] += EPS * g / g.norm()
    F.cross_entropy(reference(batch["input_ids"], batch["attention_mask"]), batch["labels"]).backward()
    for name, param in reference.named_parameters():
        assert torch.allclose(after[name], clean[name] + param.grad, atol=1e-6), name


def test_one_step_pgd_and_freelb_equal_fgm():
    results = []
    for hook in (FGM(EPS), PGD(EPS, steps=1), FreeLB(EPS, steps=1)):
        state, batch = setup()
        results.append(clean_then(hook, state, batch)[1])
    for other in results[1:]:
        assert all(torch.allclose(results[0][k], other[k], atol=1e-6) for k in other)


@pytest.mark.parametrize("hook_cls", [PGD, FreeLB])
def test_multi_step_perturbation_stays_in_ball_and_grows(hook_cls):
    state, batch = setup()
    original = state.model.embed.weight.detach().clone()
    norms = record_losses(state, lambda m: (m.embed.weight.detach() - original).norm().item())
    clean_then(hook_cls(EPS, steps=3), state, batch)
    norms = norms[1:]  # the first call is the clean loss
    assert len(norms) == 3
    assert all(n <= EPS * (1 + 1e-5) for n in norms)
    assert norms[0] == pytest.approx(EPS / 3, rel=1e-5) and norms[2] > norms[0]


def test_freelb_adds_mean_of_step_gradients():
    state, batch = setup()
    snapshots = record_losses(state, lambda m: copy.deepcopy(m))
    clean, after = clean_then(FreeLB(EPS, steps=2), state, batch)
    expected = {k: v.clone() for k, v in clean.items()}
    for model in snapshots[1:]:
        model.zero_grad()
        F.cross_entropy(model(batch["input_ids"], batch["attention_mask"]), batch["labels"]).backward()
        for name, param in model.named_parameters():
            expected[name] += param.grad / 2
    assert all(torch.allclose(after[k], expected[k], atol=1e-6) for k in after)


def test_awp_perturbs_only_weight_matrices_within_box():
    state, batch = setup()
    original = {k: v.clone() for k, v in state.model.state_dict().items()}
    deltas = record_losses(state, lambda m: {k: v - original[k] for k, v in m.state_dict().items()})
    clean_then(AWP(adv_lr=1.0, adv_eps=0.05), state, batch)
    delta = deltas[1]
    for name in ("embed.weight", "norm.weight", "norm.bias", "body.bias", "head.bias"):
        assert delta[name].abs().max().item() == 0.0, name
    for name in ("body.weight", "head.weight"):
        assert delta[name].abs().max().item() > 0, name
        assert (delta[name].abs() <= 0.05 * original[name].abs() + 1e-7).all(), name  # + float rounding of w0 + d - w0


def test_hooks_skip_frozen_embeddings():
    state, batch = setup()
    state.model.embed.weight.requires_grad_(False)
    clean, after = clean_then(PGD(EPS, 2), state, batch)
    assert all(torch.equal(clean[k], after[k]) for k in after)
