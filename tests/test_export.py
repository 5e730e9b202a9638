import json
import random
import shutil

import numpy as np
import pytest
import torch
import transformers
from torch import nn

from orchestrator.evaluate.ensemble import Ensemble
from orchestrator.evaluate.onnx_ensemble import OnnxEnsemble
from trainables.export import (
    ExportError, compare_logits, export_model_dir, export_onnx, fusable, model_type, onnx_logits, onnx_session, parity_check,
    quantize_int8,
)
from trainables.inference import predict_logits
from trainables.models import save_model_dir
from trainables.models.hf import HFClassifier
from trainables.models.small import build_small_model
from trainables.text.hf import HFTextEncoder
from trainables.batching import collate
from trainables.text.vocab import VocabTextEncoder
from trainables.config import ModelConfig

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=120,
            max_position_embeddings=64)
HF_CONFIGS = {
    "bert": lambda: transformers.BertConfig(**TINY),
    "distilbert": lambda: transformers.DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, vocab_size=120,
                                                        max_position_embeddings=64),
    "roberta": lambda: transformers.RobertaConfig(**TINY),
    "albert": lambda: transformers.AlbertConfig(embedding_size=16, **TINY),
    "electra": lambda: transformers.ElectraConfig(embedding_size=16, **TINY),
    "xlm-roberta": lambda: transformers.XLMRobertaConfig(**TINY),
    "deberta-v2": lambda: transformers.DebertaV2Config(**TINY),
    # v3 = v2 code with relative attention, log buckets, no absolute positions.
    "deberta-v3": lambda: transformers.DebertaV2Config(
        relative_attention=True, position_buckets=16, max_relative_positions=-1, pos_att_type=["p2c", "c2p"],
        position_biased_input=False, norm_rel_ebd="layer_norm", share_att_key=True, **TINY),
    "xlnet": lambda: transformers.XLNetConfig(d_model=32, n_layer=2, n_head=2, d_inner=64, vocab_size=120),
}
SMALL_ARCHS = {
    "fasttext": dict(arch="fasttext"),
    "textcnn": dict(arch="textcnn", kernel_sizes=[2, 3, 5]),
    "textrnn-lstm-bi-2": dict(arch="textrnn", rnn_type="lstm", bidirectional=True, num_layers=2),
    "textrnn-gru": dict(arch="textrnn", rnn_type="gru", bidirectional=False),
    "textrcnn": dict(arch="textrcnn", rnn_type="gru", bidirectional=True),
    "transformer": dict(arch="transformer", hidden_size=16, num_layers=2),
}
TEXTS = ["the cat sat on the mat", "a dog", "cats and dogs and more cats on a mat", "mat", "", "the the the dog sat",
         "on a cat", "dogs sat"]
VOCAB = VocabTextEncoder.build(TEXTS, tokens="word", max_length=16, vocab_size=100)


def small_config(**overrides):
    options = dict(
        kind="small", arch="textcnn", tokens="word", max_length=VOCAB.max_length, vocab_size=100, min_freq=1,
        embedding_dim=8, hidden_size=8, num_layers=1, num_filters=4, kernel_sizes=[2, 3], rnn_type="lstm",
        bidirectional=True, num_heads=2, pretrained_vectors=None, dropout=0.1, multi_sample_dropout=1, init="default",
    )
    return ModelConfig(**{**options, **overrides})


def build(name, seed=0):
    torch.manual_seed(seed)
    if name in HF_CONFIGS:
        return HFClassifier.from_config(HF_CONFIGS[name](), 3).eval()
    return build_small_model(small_config(**SMALL_ARCHS[name]), 3, VOCAB).eval()


def random_rows(n, longest, vocab, seed=0):
    """n id lists, the first ``longest`` long, the rest of random shorter lengths."""
    rng = random.Random(seed)
    return [[rng.randrange(2, vocab) for _ in range(longest if i == 0 else rng.randint(1, longest))] for i in range(n)]


def pad_id(model):
    return model.get_input_embeddings().padding_idx or 0


@pytest.mark.parametrize("name", list(HF_CONFIGS) + list(SMALL_ARCHS))
def test_onnx_logits_match_torch_at_other_batch_sizes_and_lengths(name, tmp_path):
    model = build(name)
    session = onnx_session(export_onnx(model, tmp_path / "m.onnx"))
    vocab = model.get_input_embeddings().num_embeddings
    for batch, length in ((3, 6), (5, 13)):
        inputs = collate(random_rows(batch, length, vocab, seed=length), None, pad_id(model))
        with torch.inference_mode():
            expected = model(**inputs).numpy()
        got = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
        assert got.shape == (batch, 3)
        parity = compare_logits(expected, got)
        assert parity["max_abs_diff"] <= 1e-4 and parity["same_predictions"], parity


def test_onnx_logits_batch_by_length_and_keep_input_order(tmp_path):
    model = build("textrnn-gru")
    session = onnx_session(export_onnx(model, tmp_path / "m.onnx"))
    ids = random_rows(11, 9, len(VOCAB)) + [[]]
    one_by_one = np.concatenate([predict_logits(model, [row], 0) for row in ids])
    assert np.abs(onnx_logits(session, ids, 0, batch_size=4) - one_by_one).max() <= 1e-4
    parity = parity_check(model, session, ids, 0, batch_size=4)
    assert parity["n"] == 12 and parity["same_predictions"] and parity["max_abs_diff"] <= 1e-4
    assert set(parity) >= {"max_abs_diff", "mean_abs_diff", "same_predictions", "n"}


class ShapeBranch(nn.Module):
    """Negates its output only for texts longer than 4 tokens: a branch the tracer freezes."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(10, 4)
        self.linear = nn.Linear(4, 2)

    def get_input_embeddings(self):
        return self.embedding

    def forward(self, input_ids, attention_mask):
        x = self.linear(self.embedding(input_ids).mean(1))
        return -x if input_ids.size(1) > 4 else x


class KthPool(ShapeBranch):
    """Pools with an op the legacy exporter has no ONNX translation for."""

    def forward(self, input_ids, attention_mask):
        return self.linear(torch.kthvalue(self.embedding(input_ids), 1, dim=1).values)


@pytest.mark.parametrize("module, message", [
    (ShapeBranch, r"ShapeBranch: the ONNX graph disagrees with torch at batch \d+ x length \d+ .*froze a shape"),
    (KthPool, r"KthPool: ONNX export \(opset 17\) failed: .*aten::kthvalue"),
])
def test_export_error_names_the_model_and_leaves_nothing_behind(module, message, tmp_path):
    with pytest.raises(ExportError, match=message):
        export_onnx(module(), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_int8_is_smaller_and_mostly_agrees_with_fp32(tmp_path):
    torch.manual_seed(0)
    # MatMul weights dominate (vocab 100, hidden 128), as in any base-sized encoder.
    config = transformers.BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=512, vocab_size=100, max_position_embeddings=64)
    model = HFClassifier.from_config(config, 3).eval()
    fp32 = export_onnx(model, tmp_path / "m.onnx")
    int8 = quantize_int8(fp32, tmp_path / "m.int8.onnx")
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size
    ids = random_rows(64, 20, 100)
    s32, s8 = onnx_session(fp32), onnx_session(int8)
    parity = compare_logits(onnx_logits(s32, ids, 0), onnx_logits(s8, ids, 0))
    assert parity["agreement"] >= 0.8, parity


def save_dirs(root, builder, encoder, cfg, meta, folds=2):
    dirs = []
    for fold in range(folds):
        directory = root / f"fold{fold}"
        save_model_dir(directory, builder(), encoder, cfg, meta)
        dirs.append(directory)
    return dirs


def check_export_dirs(tmp_path, model_dirs, texts, int8):
    """Export every fold, then compare OnnxEnsemble on the exports (source dirs deleted) with the
    torch Ensemble."""
    torch_ensemble = Ensemble(model_dirs, device="cpu")
    expected, names = torch_ensemble.predict_proba(texts), torch_ensemble.predict(texts).labels
    ids = torch_ensemble.encode(texts)
    out_dirs = [tmp_path / "onnx" / d.name for d in model_dirs]
    for model_dir, out_dir in zip(model_dirs, out_dirs):
        parity = export_model_dir(model_dir, out_dir, ids, int8=int8)
        assert json.loads((out_dir / "parity.json").read_text()) == parity
        assert parity["ok"] and parity["n"] == len(texts) and parity["max_abs_diff"] <= 1e-4
        assert "model.pt" not in {p.name for p in out_dir.iterdir()}
        if int8:
            assert 0 <= parity["int8"]["agreement"] <= 1 and parity["int8"]["size_ratio"] > 0
    shutil.rmtree(tmp_path / "models")
    ensemble = OnnxEnsemble(out_dirs)
    assert (ensemble.classes, ensemble.multilabel, ensemble.threshold) == \
           (torch_ensemble.classes, torch_ensemble.multilabel, torch_ensemble.threshold)
    assert np.abs(ensemble.predict_proba(texts) - expected).max() <= 1e-4
    assert ensemble.predict(texts).labels == names
    if int8:
        assert OnnxEnsemble(out_dirs, int8=True, threads=1).predict_proba(texts).shape == expected.shape


def test_export_model_dir_small_models_int8(tmp_path):
    cfg = small_config(arch="transformer", hidden_size=16)
    meta = {"classes": ["a", "b", "c"], "multilabel": False, "threshold": 0.5}
    dirs = save_dirs(tmp_path / "models", lambda: build_small_model(cfg, 3, VOCAB), VOCAB, cfg, meta)
    check_export_dirs(tmp_path, dirs, TEXTS, int8=True)


def test_export_model_dir_hf_multilabel(tmp_path):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted({w for t in TEXTS for w in t.split()})
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    encoder = HFTextEncoder(transformers.BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")), max_length=12)
    cfg = ModelConfig(kind="hf", name="tiny-bert", max_length=12, dropout=0.1, multi_sample_dropout=1,
                          pooling="cls")
    meta = {"classes": ["x", "y"], "multilabel": True, "threshold": 0.5}
    config = transformers.BertConfig(**{**TINY, "vocab_size": len(words)})
    dirs = save_dirs(tmp_path / "models", lambda: HFClassifier.from_config(config, 2, pooling="cls"), encoder, cfg,
                     meta, folds=1)
    stale = tmp_path / "onnx" / "fold0" / "model.int8.onnx"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"int8 model of older weights")
    check_export_dirs(tmp_path, dirs, TEXTS, int8=False)
    assert not stale.exists()


def test_model_type_is_the_hf_model_type_or_the_class_name():
    assert model_type(build("deberta-v3")) == "deberta-v2"
    assert model_type(build("textcnn")) == "TextCNN"


def op_types(path):
    import onnx

    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_bert_graph_is_fused_keeps_parity_and_quantizes_its_attention(tmp_path):
    """A BERT-type encoder (MiniLM's) is exported with ONNX Runtime's fused kernels; the logits stay
    within 1e-4 of torch, int8 quantizes the fused attention too, and a transformer-pruned encoder
    (heads per layer differ) is left unfused."""
    model = build("bert")
    fused = export_onnx(model, tmp_path / "m.onnx")
    assert fusable(model) and {"Attention", "SkipLayerNormalization"} <= op_types(fused)
    assert "Attention" not in op_types(export_onnx(model, tmp_path / "plain.onnx", fuse=False))
    ids = random_rows(9, 20, model.get_input_embeddings().num_embeddings)
    parity = parity_check(model, onnx_session(fused), ids, pad_id(model), batch_size=4)
    assert parity["max_abs_diff"] <= 1e-4 and parity["same_predictions"], parity
    assert model.encoder.config._attn_implementation != "eager"  # the export's eager attention is undone
    int8 = quantize_int8(fused, tmp_path / "m.int8.onnx")
    assert "QAttention" in op_types(int8) and "Attention" not in op_types(int8)
    assert compare_logits(onnx_logits(onnx_session(fused), ids, 0), onnx_logits(onnx_session(int8), ids, 0))["agreement"] >= 0.8
    model.encoder.config.pruned_layout = {"num_heads": [2, 1], "intermediate_sizes": [64, 64]}
    assert not fusable(model) and not fusable(build("roberta")) and not fusable(build("textcnn"))
