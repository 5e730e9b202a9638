
import pytest

from trainables.tricks.adversarial import AWP, FGM, PGD, FreeLB
from trainables.tricks.averaging import WeightAveraging
from trainables.tricks.losses import RDrop
from trainables.tricks.optim import NoisyTune
from trainables.tricks.build import build_hooks
from trainables.config import TrainConfig


def cfg(**kw):
    off = dict(noisytune=0.0, rdrop_alpha=0.0, adversarial="none", adv_epsilon=1.0, adv_steps=3,
               ema_decay=None, swa_start_epoch=None)
    return TrainConfig(**{**off, **kw})


def kinds(hooks):
    return [type(h) for h in hooks.hooks]


def test_everything_off_gives_no_hooks():
    assert build_hooks(cfg(), multilabel=False).hooks == []


@pytest.mark.parametrize("option, hook_type", [
    ({"noisytune": 0.15}, NoisyTune), ({"rdrop_alpha": 1.0}, RDrop), ({"adversarial": "fgm"}, FGM),
    ({"adversarial": "pgd"}, PGD), ({"adversarial": "freelb"}, FreeLB), ({"adversarial": "awp"}, AWP),
    ({"ema_decay": 0.99}, WeightAveraging), ({"swa_start_epoch": 2}, WeightAveraging),
])
def test_each_option_adds_its_hook(option, hook_type):
    assert kinds(build_hooks(cfg(**option), multilabel=False)) == [hook_type]


def test_options_are_passed_and_ordered():
    hooks = build_hooks(cfg(swa_start_epoch=2, adversarial="pgd", adv_epsilon=0.3, adv_steps=5,
                            rdrop_alpha=4.0, noisytune=0.1), multilabel=True)
    assert kinds(hooks) == [NoisyTune, RDrop, PGD, WeightAveraging]
    noisy, rdrop, pgd, swa = hooks.hooks
    assert noisy.noise_lambda == 0.1 and (rdrop.alpha, rdrop.multilabel) == (4.0, True)
    assert (pgd.epsilon, pgd.steps) == (0.3, 5) and swa.swa_start_epoch == 2 and swa.ema_decay is None


def test_ema_and_swa_together_are_rejected():
    with pytest.raises(ValueError, match=r"train\.swa_start_epoch"):
        build_hooks(cfg(ema_decay=0.99, swa_start_epoch=2), multilabel=False)
