import math

import pytest
import torch
from torch import nn

from tests.test_losses import TinyClassifier
from trainables.hooks import TrainState
from trainables.tricks.optim import NoisyTune, build_optimizer, build_scheduler, init_weights, param_groups
from trainables.config import TrainConfig


def cfg(**kw):
    base = dict(optimizer="adamw", lr=1e-3, head_lr=None, weight_decay=0.01, schedule="linear", warmup_ratio=0.1)
    return TrainConfig(**{**base, **kw})


def group_of(optimizer, param):
    return next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd", "adafactor"])
def test_param_groups_lrs_and_decay(name):
    model = TinyClassifier()
    opt = build_optimizer(model, cfg(optimizer=name, head_lr=5e-3))
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    expect = {  # param -> (lr, weight decay)
        model.embed.weight: (1e-3, 0.01), model.body.weight: (1e-3, 0.01), model.body.bias: (1e-3, 0.0),
        model.norm.weight: (1e-3, 0.0), model.norm.bias: (1e-3, 0.0),
        model.head.weight: (5e-3, 0.01), model.head.bias: (5e-3, 0.0),
    }
    for param, (lr, wd) in expect.items():
        group = group_of(opt, param)
        assert (group["lr"], group["weight_decay"]) == (lr, wd)


def test_head_lr_defaults_to_lr_and_frozen_params_are_left_out():
    model = TinyClassifier()
    model.embed.weight.requires_grad_(False)
    groups = param_groups(model, 1e-3, None, 0.0)
    assert {g["lr"] for g in groups} == {1e-3}
    assert not any(p is model.embed.weight for g in groups for p in g["params"])


def test_sgd_has_momentum_and_adafactor_uses_fixed_lr():
    assert build_optimizer(TinyClassifier(), cfg(optimizer="sgd")).param_groups[0]["momentum"] == 0.9
    group = build_optimizer(TinyClassifier(), cfg(optimizer="adafactor")).param_groups[0]
    assert (group["relative_step"], group["scale_parameter"], group["warmup_init"]) == (False, False, False)


def lrs(schedule, total=20, warmup_ratio=0.1, optimizer="adamw"):
    opt = build_optimizer(TinyClassifier(), cfg(schedule=schedule, warmup_ratio=warmup_ratio, optimizer=optimizer))
    sched = build_scheduler(opt, cfg(schedule=schedule, warmup_ratio=warmup_ratio), total)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("optimizer", ["adamw", "adafactor"])
def test_linear_schedule_warms_up_then_decays(optimizer):
    lr = lrs("linear", optimizer=optimizer)  # warmup = round(0.1 * 20) = 2 steps
    assert lr[:3] == pytest.approx([0.0, 5e-4, 1e-3])
    assert lr[11] == pytest.approx(1e-3 * (20 - 11) / 18)
    assert lr[19] == pytest.approx(1e-3 / 18)


def test_cosine_and_constant_schedules():
    cos = lrs("cosine")
    assert cos[2] == pytest.approx(1e-3)
    assert cos[11] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 9 / 18)))
    constant = lrs("constant", warmup_ratio=0.25)  # warmup = 5 steps
    assert constant[4] == pytest.approx(0.8e-3) and constant[5:] == pytest.approx([1e-3] * 15)


def _stats(scheme, module):
    torch.manual_seed(0)
    init_weights(module, scheme)
    return module


def test_init_schemes_set_expected_std_and_zero_biases():
    fan = 256
    xavier = _stats("xavier", nn.Linear(fan, fan)).weight
    assert xavier.abs().max() <= math.sqrt(6 / (2 * fan))
    assert xavier.std().item() == pytest.approx(math.sqrt(2 / (2 * fan)), rel=0.05)
    kaiming = _stats("kaiming", nn.Conv1d(fan, 64, 1)).weight
    assert kaiming.std().item() == pytest.approx(math.sqrt(2 / fan), rel=0.05)
    normal = _stats("normal", nn.Embedding(300, 64, padding_idx=0)).weight
    assert normal[1:].std().item() == pytest.approx(0.02, rel=0.05)
    assert normal[0].abs().sum().item() == 0.0
    rnn = _stats("normal", nn.LSTM(16, 32))
    assert rnn.bias_ih_l0.abs().sum().item() == 0.0 and rnn.bias_hh_l0.abs().sum().item() == 0.0
    assert rnn.weight_hh_l0.std().item() == pytest.approx(0.02, rel=0.1)
    assert _stats("xavier", nn.Linear(4, 4)).bias.abs().sum().item() == 0.0


def test_default_init_leaves_weights_alone():
    model = TinyClassifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    init_weights(model, "default")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _noised(noise_lambda, seed):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 100))
    model.register_parameter("scale", nn.Parameter(torch.tensor([3.0])))
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    torch.manual_seed(seed)
    NoisyTune(noise_lambda).on_fit_start(TrainState(model=model, optimizer=None, loss_fn=None))
    return before, dict(model.named_parameters())


def test_noisytune_scale_and_skips_single_elements():
    before, after = _noised(0.15, seed=1)
    noise = after["0.weight"].detach() - before["0.weight"]
    bound = 0.15 / 2 * before["0.weight"].std()
    assert noise.abs().max() <= bound * (1 + 1e-5)
    assert noise.std().item() == pytest.approx(0.15 * before["0.weight"].std().item() / math.sqrt(12), rel=0.05)
    assert not torch.equal(after["0.bias"].detach(), before["0.bias"])
    assert torch.equal(after["scale"].detach(), before["scale"])


def test_noisytune_is_seeded():
    _, a = _noised(0.15, seed=1)
    _, b = _noised(0.15, seed=1)
    _, c = _noised(0.15, seed=2)
    assert torch.equal(a["0.weight"], b["0.weight"]) and not torch.equal(a["0.weight"], c["0.weight"])


def tiny_bert(layers=3):
    import transformers

    from trainables.models.hf import HFClassifier

    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32)
    return HFClassifier.from_config(config, num_classes=3)


def test_layer_lr_decay_lowers_each_layer_by_the_decay_with_embeddings_lowest():
    model = tiny_bert(layers=3)
    opt = build_optimizer(model, cfg(lr=1e-3, head_lr=1e-2, layer_lr_decay=0.5))
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    lr_of = {name: group_of(opt, p)["lr"] for name, p in model.named_parameters()}
    for i, expect in enumerate([2.5e-4, 5e-4, 1e-3]):  # layer 2 is the top: lr; each lower layer x 0.5
        layer = [v for n, v in lr_of.items() if f".layer.{i}." in n]
        assert layer and all(v == pytest.approx(expect) for v in layer), (i, set(layer))
    assert lr_of["encoder.embeddings.word_embeddings.weight"] == pytest.approx(1.25e-4)
    assert lr_of["encoder.embeddings.LayerNorm.weight"] == pytest.approx(1.25e-4)
    assert lr_of["head.linear.weight"] == 1e-2
    assert lr_of["encoder.pooler.dense.weight"] == 1e-3  # above the layers: lr
    assert group_of(opt, model.encoder.embeddings.LayerNorm.weight)["weight_decay"] == 0.0


def test_no_layer_lr_decay_keeps_one_body_lr():
    opt = build_optimizer(tiny_bert(), cfg(lr=1e-3))
    assert {g["lr"] for g in opt.param_groups} == {1e-3}


def test_adafactor_schedule_is_adafactors_relative_step_lr_growing_in_warmup():
    import transformers

    config = transformers.T5Config(vocab_size=40, d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8,
                                   decoder_start_token_id=0, pad_token_id=0)
    model = transformers.T5ForConditionalGeneration(config)
    train_cfg = cfg(optimizer="adafactor", schedule="adafactor")
    opt = build_optimizer(model, train_cfg)
    assert (opt.param_groups[0]["relative_step"], opt.param_groups[0]["scale_parameter"],
            opt.param_groups[0]["warmup_init"], opt.defaults["lr"]) == (True, True, True, None)
    sched = build_scheduler(opt, train_cfg, total_steps=10)
    ids = torch.randint(1, 40, (4, 6))
    seen = []
    for _ in range(5):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=False)
        seen.append(float(sched.get_last_lr()[0]))
    # warmup_init: 1e-6 x step x the parameter's RMS, so it starts tiny and grows each step
    assert all(b > a for a, b in zip(seen, seen[1:])) and seen[0] < 1e-4, seen


def test_adafactor_schedule_needs_the_adafactor_optimizer():
    with pytest.raises(ValueError, match="train.optimizer: adafactor"):
        cfg(optimizer="adamw", schedule="adafactor")
