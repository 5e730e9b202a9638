"""The HF encoder zoo on tiny random configs: each architecture trains with the real Trainer, saves and
reloads through the model directory, pools by [CLS] or mean, and averages multi-sample dropout."""
import numpy as np
import pytest
import torch
import transformers

from orchestrator.config import ModelConfig, TrainConfig
from trainables.inference import predict_logits
from trainables.loop import FoldData, Trainer
from trainables.models import load_model_dir, save_model_dir
from trainables.models.hf import HFClassifier
from trainables.text.hf import HFTextEncoder
from trainables.batching import collate

CLASSES = ["weather", "sport"]
TEXTS = [
    ("rain and wind all day", 0), ("sunny skies and a warm breeze", 0), ("snow storm tonight", 0),
    ("cold fog this morning with light rain", 0), ("clouds", 0), ("heavy rain and thunder in the north", 0),
    ("the team won the match", 1), ("a late goal in the final", 1), ("the striker scored twice", 1),
    ("coach praised the team after the match", 1), ("goal", 1), ("fans cheered the final whistle of the game", 1),
]
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, max_position_embeddings=64)
# Each config is built for the tokenizer's vocabulary and [PAD] id (RoBERTa/XLM-R derive position ids from it).
ARCHS = {
    "bert": lambda v, pad: transformers.BertConfig(vocab_size=v, pad_token_id=pad, **TINY),
    "distilbert": lambda v, pad: transformers.DistilBertConfig(
        vocab_size=v, pad_token_id=pad, dim=32, n_layers=2, n_heads=4, hidden_dim=48, max_position_embeddings=64),
    "roberta": lambda v, pad: transformers.RobertaConfig(vocab_size=v, pad_token_id=pad, **TINY),
    "albert": lambda v, pad: transformers.AlbertConfig(vocab_size=v, pad_token_id=pad, embedding_size=16,
                                                       **{**TINY, "num_attention_heads": 4}),
    "xlnet": lambda v, pad: transformers.XLNetConfig(vocab_size=v, pad_token_id=pad, d_model=32, n_layer=2, n_head=2,
                                                     d_inner=64),
    "electra": lambda v, pad: transformers.ElectraConfig(vocab_size=v, pad_token_id=pad, embedding_size=16, **TINY),
    "minilm": lambda v, pad: transformers.BertConfig(vocab_size=v, pad_token_id=pad, **{**TINY, "intermediate_size": 64}),
    # v3 = v2 code with relative attention, log buckets and no absolute positions
    "deberta-v3": lambda v, pad: transformers.DebertaV2Config(
        vocab_size=v, pad_token_id=pad, relative_attention=True, position_buckets=16, max_relative_positions=-1,
        pos_att_type=["p2c", "c2p"], position_biased_input=False, norm_rel_ebd="layer_norm", share_att_key=True,
        **{**TINY, "num_attention_heads": 4}),
    "xlm-roberta": lambda v, pad: transformers.XLMRobertaConfig(vocab_size=v, pad_token_id=pad, **TINY),
}
every_arch = pytest.mark.parametrize("name", list(ARCHS))


def tiny_encoder(folder) -> HFTextEncoder:
    """A WordPiece tokenizer whose vocabulary is the toy corpus' words (so the models stay tiny)."""
    words = sorted({w for text, _ in TEXTS for w in text.split()})
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    return HFTextEncoder(transformers.BertTokenizerFast(vocab_file=str(vocab)), max_length=32)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return tiny_encoder(tmp_path_factory.mktemp("tok"))


def build(name, encoder, **kwargs):
    torch.manual_seed(0)
    config = ARCHS[name](len(encoder.tokenizer), encoder.pad_id)
    return HFClassifier.from_config(config, len(CLASSES), **kwargs)


def fold_data(encoder):
    ids = encoder.encode([t for t, _ in TEXTS])
    labels = np.array([y for _, y in TEXTS])
    return FoldData(ids, labels, ids, labels, pad_id=encoder.pad_id, num_classes=len(CLASSES))


def batch(encoder, texts):
    b = collate(encoder.encode(texts), None, encoder.pad_id)
    return b["input_ids"], b["attention_mask"]


@every_arch
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_trains_with_the_loop_and_reloads_with_the_same_logits(name, pooling, encoder, tmp_path):
    model = build(name, encoder, pooling=pooling)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = fold_data(encoder)
    cfg = TrainConfig(epochs=2, batch_size=4, lr=3e-3, warmup_ratio=0.0, sampler="random", early_stopping_patience=None)
    history = Trainer(model, data, cfg, seed=0).fit().history
    assert all(np.isfinite(h["train_loss"]) and np.isfinite(h["val_loss"]) for h in history)
    changed = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert "head.linear.weight" in changed and any(k.startswith("encoder.") for k in changed)

    meta = {"classes": CLASSES, "multilabel": False, "threshold": 0.5}
    save_model_dir(tmp_path, model, encoder, ModelConfig(kind="hf", name=name, max_length=32, pooling=pooling), meta)
    loaded, loaded_encoder, loaded_meta = load_model_dir(tmp_path)
    assert type(loaded.encoder) is type(model.encoder) and loaded_meta["classes"] == CLASSES
    ids = loaded_encoder.encode([t for t, _ in TEXTS])
    assert ids == data.val_ids
    expected = predict_logits(model, data.val_ids, encoder.pad_id, batch_size=5)
    assert np.abs(predict_logits(loaded, ids, loaded_encoder.pad_id, batch_size=5) - expected).max() <= 1e-6


@every_arch
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_pooling_reads_the_right_tokens_and_ignores_padding(name, pooling, encoder):
    model = build(name, encoder, pooling=pooling).eval()
    input_ids, mask = batch(encoder, ["rain", "the team won the final match"])
    with torch.no_grad():
        hidden = model.encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
        logits = model(input_ids, mask)
        alone = model(*batch(encoder, ["rain"]))
    if pooling == "mean":
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    else:  # XLNet's <cls> is the last real token; the others' [CLS] is the first
        at = mask.sum(1) - 1 if name == "xlnet" else torch.zeros(len(mask), dtype=torch.long)
        pooled = hidden[torch.arange(len(mask)), at]
    torch.testing.assert_close(logits, model.head.linear(pooled))
    torch.testing.assert_close(logits[:1], alone, atol=1e-5, rtol=0)  # right padding changes nothing


@every_arch
def test_multi_sample_dropout_averages_in_training_only(name, encoder):
    model = build(name, encoder, dropout=0.5, samples=3)
    input_ids, mask = batch(encoder, ["rain and wind", "goal"])
    masks_drawn = []
    model.head.dropout.register_forward_hook(lambda *_: masks_drawn.append(1))
    model.eval()
    with torch.no_grad():
        pooled_logits = model(input_ids, mask)
        assert len(masks_drawn) == 1
        model.head.train()  # encoder stays in eval: only the head's dropout draws random numbers
        torch.manual_seed(1)
        averaged = model(input_ids, mask)
        assert len(masks_drawn) == 4
        torch.manual_seed(1)
        features = (model.encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state * mask[..., None]).sum(1)
        features = features / mask.sum(1, keepdim=True)
        by_hand = torch.stack([model.head.linear(model.head.dropout(features)) for _ in range(3)]).mean(0)
    torch.testing.assert_close(averaged, by_hand)
    torch.testing.assert_close(pooled_logits, model.head.linear(features))
    assert not torch.allclose(averaged, pooled_logits)
