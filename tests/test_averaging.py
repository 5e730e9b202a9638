import io

import pytest
import torch
from torch import nn

from trainables.tricks.averaging import WeightAveraging
from trainables.hooks import TrainState


def setup(**kw):
    model = nn.Linear(3, 2)
    state = TrainState(model=model, optimizer=None, loss_fn=None)
    return model, state, WeightAveraging(**kw)


def set_weights(model, value: float):
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


def weights(model):
    return [p.detach().clone() for p in model.parameters()]


def averaged_view(hook, state):
    with hook.eval_weights(state):
        return weights(state.model)


def test_ema_matches_hand_value_and_ignores_epoch_ends():
    d = 0.9
    model, state, hook = setup(ema_decay=d)
    for value in (1.0, 2.0, 4.0):
        set_weights(model, value)
        hook.after_optimizer_step(state)
        hook.on_epoch_end(state, 0)
    expected = d * (d * 1.0 + (1 - d) * 2.0) + (1 - d) * 4.0
    assert all(torch.allclose(w, torch.full_like(w, expected)) for w in averaged_view(hook, state))


def test_eval_weights_swaps_in_and_restores_exactly_even_on_error():
    model, state, hook = setup(ema_decay=0.5)
    set_weights(model, 1.0)
    hook.after_optimizer_step(state)
    torch.manual_seed(0)
    for p in model.parameters():
        p.data = torch.randn_like(p)
    live = weights(model)
    with pytest.raises(RuntimeError):
        with hook.eval_weights(state):
            assert all(torch.equal(p, torch.ones_like(p)) for p in model.parameters())
            raise RuntimeError("evaluation failed")
    assert all(torch.equal(a, b) for a, b in zip(live, weights(model)))


def test_swa_averages_exactly_the_epoch_end_weights_from_start_epoch():
    model, state, hook = setup(swa_start_epoch=2)
    for epoch, value in enumerate([10.0, 1.0, 2.0, 6.0]):  # the config's epochs 1..4
        set_weights(model, value + 100)
        hook.after_optimizer_step(state)  # mid-epoch weights must not count
        set_weights(model, value)
        hook.on_epoch_end(state, epoch)
        if epoch == 0:  # nothing averaged yet: evaluate the live weights
            assert all(torch.equal(w, torch.full_like(w, 10.0)) for w in averaged_view(hook, state))
    assert all(torch.allclose(w, torch.full_like(w, 3.0)) for w in averaged_view(hook, state))


def test_state_dict_round_trip_before_and_after_first_use():
    model, state, hook = setup(swa_start_epoch=1)
    for epoch, value in enumerate([1.0, 5.0]):
        set_weights(model, value)
        hook.on_epoch_end(state, epoch)
    buffer = io.BytesIO()
    torch.save(hook.state_dict(), buffer)
    saved = torch.load(io.BytesIO(buffer.getvalue()))
    for used_first in (False, True):  # the loop's resume loads state into a fresh, unused hook
        resumed = WeightAveraging(swa_start_epoch=1)
        if used_first:
            averaged_view(resumed, state)
        resumed.load_state_dict(saved)
        set_weights(model, 9.0)
        resumed.on_epoch_end(state, 2)  # continues the running mean: (1 + 5 + 9) / 3
        assert all(torch.allclose(w, torch.full_like(w, 5.0)) for w in averaged_view(resumed, state))


def test_exactly_one_mode():
    with pytest.raises(ValueError):
        WeightAveraging()
    with pytest.raises(ValueError):
        WeightAveraging(ema_decay=0.9, swa_start_epoch=1)
