import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainables.hooks import TrainState
from trainables.tricks.losses import RDrop, build_loss, class_weights, distill_loss, kl_divergence_sym, zlpr_loss
from trainables.config import TrainConfig

LOGITS = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, -0.3], [-1.5, 3.0, 0.0], [0.0, 0.0, 4.0]])
LABELS = torch.tensor([0, 2, 1, 0])


class TinyClassifier(nn.Module):
    """Embedding -> dropout -> masked mean -> ``head`` linear: the model contract in miniature."""

    def __init__(self, vocab: int = 20, dim: int = 8, classes: int = 3, dropout: float = 0.0):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.body = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(dim, classes)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def forward(self, input_ids, attention_mask):
        hidden = torch.tanh(self.body(self.norm(self.embed(input_ids))))
        mask = attention_mask.unsqueeze(-1).float()
        return self.head(self.dropout((hidden * mask).sum(1) / mask.sum(1)))


def make_batch(batch: int = 4, length: int = 5, vocab: int = 20, classes: int = 3, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(1, vocab, (batch, length), generator=g),
        "attention_mask": torch.ones(batch, length, dtype=torch.long),
        "labels": torch.randint(0, classes, (batch,), generator=g),
    }


def cfg(**kw):
    base = dict(loss="ce", focal_gamma=2.0, poly_epsilon=1.0, class_weights="none", label_smoothing=0.0)
    return TrainConfig(**{**base, **kw})


def log_pt(logits=LOGITS, labels=LABELS):
    return logits.log_softmax(-1)[torch.arange(len(labels)), labels]


@pytest.mark.parametrize("weights", ["none", [1.0, 2.0, 0.5]])
def test_focal_with_gamma_zero_is_ce(weights):
    focal = build_loss(cfg(loss="focal", focal_gamma=0.0, class_weights=weights), 3, False, None)
    ce = build_loss(cfg(class_weights=weights), 3, False, None)
    assert torch.allclose(focal(LOGITS, LABELS), ce(LOGITS, LABELS))


def test_focal_matches_formula():
    lp = log_pt()
    expected = (-(1 - lp.exp()) ** 2 * lp).mean()
    assert torch.allclose(build_loss(cfg(loss="focal"), 3, False, None)(LOGITS, LABELS), expected)


def test_focal_gradient_is_finite_for_confident_predictions():
    logits = torch.tensor([[40.0, 0.0, 0.0]], requires_grad=True)  # p_y rounds to exactly 1
    build_loss(cfg(loss="focal", focal_gamma=0.5), 3, False, None)(logits, torch.tensor([0])).backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("weights", ["none", [1.0, 2.0, 0.5]])
def test_poly_with_epsilon_zero_is_ce(weights):
    poly = build_loss(cfg(loss="poly", poly_epsilon=0.0, class_weights=weights), 3, False, None)
    assert torch.allclose(poly(LOGITS, LABELS), F.cross_entropy(LOGITS, LABELS, weight=class_weights(weights, 3, None)))


def test_poly_adds_epsilon_times_one_minus_pt():
    lp = log_pt()
    expected = (-lp + 2.0 * (1 - lp.exp())).mean()
    assert torch.allclose(build_loss(cfg(loss="poly", poly_epsilon=2.0), 3, False, None)(LOGITS, LABELS), expected)


def test_label_smoothing_matches_formula_and_torch():
    eps = 0.2
    loss = build_loss(cfg(label_smoothing=eps), 3, False, None)(LOGITS, LABELS)
    expected = ((1 - eps) * -log_pt() + eps * -LOGITS.log_softmax(-1).mean(-1)).mean()
    assert torch.allclose(loss, expected)
    assert torch.allclose(loss, torch.nn.CrossEntropyLoss(label_smoothing=eps)(LOGITS, LABELS))


def test_weighted_ce_normalises_by_target_weights():
    w = torch.tensor([1.0, 2.0, 0.5])
    loss = build_loss(cfg(class_weights=w.tolist()), 3, False, None)(LOGITS, LABELS)
    assert torch.allclose(loss, (w[LABELS] * -log_pt()).sum() / w[LABELS].sum())


def test_balanced_weights_match_sklearn():
    import numpy as np
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([0] * 7 + [1] * 2 + [2] * 11)
    counts = [7, 2, 11]
    expected = compute_class_weight("balanced", classes=np.arange(3), y=y)
    assert torch.allclose(class_weights("balanced", 3, counts), torch.tensor(expected, dtype=torch.float))


def test_explicit_weights_must_match_num_classes():
    with pytest.raises(ValueError, match=r"train\.class_weights"):
        build_loss(cfg(class_weights=[1.0, 2.0]), 3, False, None)


def test_loss_kind_must_fit_multilabel_flag():
    with pytest.raises(ValueError, match=r"train\.loss"):
        build_loss(cfg(loss="ce"), 3, True, None)
    with pytest.raises(ValueError, match=r"train\.label_smoothing"):
        build_loss(cfg(loss="focal", label_smoothing=0.1), 3, False, None)


def test_bce_pos_weight():
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    s = LOGITS[:2]
    pw = torch.tensor([2.0, 1.0, 3.0])
    loss = build_loss(cfg(loss="bce", class_weights=pw.tolist()), 3, True, None)(s, y)
    expected = -(pw * y * F.logsigmoid(s) + (1 - y) * F.logsigmoid(-s)).mean()
    assert torch.allclose(loss, expected)


def test_zlpr_matches_hand_computation():
    s = torch.tensor([[2.0, -1.0, 0.5], [0.3, 1.2, -0.4]])
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    row0 = math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(-2.0) + math.exp(-0.5))
    row1 = math.log(1 + math.exp(0.3) + math.exp(1.2) + math.exp(-0.4)) + math.log(1)
    assert zlpr_loss(s, y).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    assert build_loss(cfg(loss="zlpr"), 3, True, None)(s, y).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_zlpr_gradient_is_finite():
    s = torch.randn(3, 4, requires_grad=True)
    zlpr_loss(s, torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])).backward()
    assert torch.isfinite(s.grad).all()


def test_symmetric_kl_matches_kl_div():
    a, b = LOGITS, LOGITS.flip(0)
    kl = lambda p, q: F.kl_div(q.log_softmax(-1), p.log_softmax(-1), log_target=True, reduction="batchmean")
    assert torch.allclose(kl_divergence_sym(a, b), (kl(a, b) + kl(b, a)) / 2)
    assert kl_divergence_sym(a, a).item() == 0.0


def test_symmetric_kl_multilabel_is_bernoulli_kl():
    a, b = LOGITS, LOGITS.flip(0)
    p, q = a.sigmoid(), b.sigmoid()
    bern = lambda p, q: (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).sum(-1).mean()
    assert torch.allclose(kl_divergence_sym(a, b, multilabel=True), (bern(p, q) + bern(q, p)) / 2, atol=1e-6)


def test_distill_kl_has_temperature_squared_scaling():
    s, t, T = LOGITS, LOGITS.flip(0), 3.0
    expected = F.kl_div((s / T).log_softmax(-1), (t / T).softmax(-1), reduction="batchmean") * T * T
    assert torch.allclose(distill_loss(s, t, kind="kl", temperature=T), expected, atol=1e-6)
    entropy = -((t / T).softmax(-1) * (t / T).log_softmax(-1)).sum(-1).mean()
    ce_minus_kl = distill_loss(s, t, kind="ce", temperature=T) - distill_loss(s, t, kind="kl", temperature=T)
    assert torch.allclose(ce_minus_kl, entropy * T * T, atol=1e-5)


def test_distill_alpha_mixes_soft_and_hard():
    s, t = LOGITS, LOGITS.flip(0)
    soft = distill_loss(s, t, kind="mse")
    assert torch.allclose(soft, ((s - t) ** 2).mean())
    mixed = distill_loss(s, t, LABELS, kind="mse", alpha=0.25, hard_loss_fn=F.cross_entropy)
    assert torch.allclose(mixed, 0.25 * soft + 0.75 * F.cross_entropy(s, LABELS))
    with pytest.raises(ValueError):
        distill_loss(s, t, LABELS, alpha=0.5)


def test_distill_multilabel_kl_is_zero_for_equal_logits():
    assert distill_loss(LOGITS, LOGITS, kind="kl", temperature=2.0, multilabel=True).abs().item() < 1e-5


def _rdrop_state(model):
    return TrainState(model=model, optimizer=None, loss_fn=F.cross_entropy)


def test_rdrop_alpha_zero_is_mean_ce_of_two_dropout_passes():
    torch.manual_seed(0)
    model, batch = TinyClassifier(dropout=0.5), make_batch()
    torch.manual_seed(1)
    loss = RDrop(alpha=0.0).loss(_rdrop_state(model), batch)
    torch.manual_seed(1)
    doubled = {k: torch.cat([batch[k], batch[k]]) for k in ("input_ids", "attention_mask")}
    a, b = model(**doubled).chunk(2)
    assert not torch.allclose(a, b)  # dropout made the passes differ
    assert torch.allclose(loss, (F.cross_entropy(a, batch["labels"]) + F.cross_entropy(b, batch["labels"])) / 2)


def test_rdrop_alpha_adds_positive_kl_term():
    torch.manual_seed(0)
    model, batch = TinyClassifier(dropout=0.5), make_batch()
    losses = []
    for alpha in (0.0, 4.0):
        torch.manual_seed(1)
        losses.append(RDrop(alpha=alpha).loss(_rdrop_state(model), batch))
    torch.manual_seed(1)
    doubled = {k: torch.cat([batch[k], batch[k]]) for k in ("input_ids", "attention_mask")}
    kl = kl_divergence_sym(*model(**doubled).chunk(2))
    assert kl.item() > 0
    assert torch.allclose(losses[1] - losses[0], 4.0 * kl, atol=1e-6)
