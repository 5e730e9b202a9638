"""TextPruner on transformers 5: the head/FFN shim, TransformerPruner and VocabularyPruner through it,
reload of pruned model directories, ONNX export, and the prune stage. Tiny random BERTs; the packaged
MiniLM tokenizer (nothing downloads)."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import transformers
from transformers import AutoConfig, AutoTokenizer

from orchestrator.rundir import RunDir
from orchestrator.config import DataConfig, ExperimentConfig, ModelConfig, PruneConfig
from orchestrator.data import Split
from orchestrator.stages.prune import run_prune
from trainables import prune
from trainables.export import export_onnx, onnx_logits, onnx_session
from trainables.inference import predict_logits
from trainables.models import HF_CONFIG_DIR, MODEL_FILE, count_parameters, load_model_dir, save_model_dir
from trainables.models.pruned_shapes import restore_pruned_shapes
from trainables.models.hf import HFClassifier
from trainables.pretrained import resolve_pretrained
from trainables.text.hf import HFTextEncoder

HIDDEN, HEADS, FFN, HEAD_SIZE = 32, 4, 64, 8
TEXTS = ["the cat sat on the mat", "a dog barked at the cat", "markets fell as shares slid",
         "the team won the final match", "rain and wind on the coast", "shares rose on the news"]
KEPT_ONLY = "the dog sat on the mat as the team won"  # every word occurs in TEXTS
CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_pretrained("minilm-l6"))


def tiny_model(vocab_size: int = 30522) -> HFClassifier:
    """A random 2-layer BERT classifier (hidden 32, 4 heads, FFN 64) with its own config object."""
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=vocab_size, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=HEADS,
                                     intermediate_size=FFN, max_position_embeddings=64)
    return HFClassifier.from_config(config, len(CLASSES)).eval()


def padded_inputs(vocab_size: int = 30522) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, vocab_size, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return ids, mask


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(*inputs)


def batches(labels: np.ndarray, n: int = 24) -> list[dict]:
    rng = np.random.default_rng(0)
    ids = [rng.integers(1, 30522, size=rng.integers(3, 12)).tolist() for _ in range(n)]
    return prune.loss_batches(ids, labels, pad_id=0, batch_size=8)


def encoder_of(tokenizer) -> HFTextEncoder:
    return HFTextEncoder(tokenizer, 32)


# ---- the shim ------------------------------------------------------------------------------------

def test_pruning_heads_equals_masking_them():
    model, inputs = tiny_model(), padded_inputs()
    masked = copy.deepcopy(model)
    with torch.no_grad():  # a head whose output columns are zero contributes nothing: a head mask of 0
        dense = masked.encoder.encoder.layer[0].attention.output.dense
        for head in (0, 2):
            dense.weight[:, head * HEAD_SIZE : (head + 1) * HEAD_SIZE] = 0
    before = count_parameters(model)

    prune.prune_heads(model.encoder, {0: [0, 2]})

    assert torch.allclose(logits(model, inputs), logits(masked, inputs), atol=1e-6)
    assert not torch.allclose(logits(model, inputs), logits(tiny_model(), inputs), atol=1e-4)
    # per head: query/key/value lose HEAD_SIZE rows (+ bias), the output dense HEAD_SIZE columns
    assert before - count_parameters(model) == 2 * (4 * HIDDEN * HEAD_SIZE + 3 * HEAD_SIZE)
    attention = model.encoder.encoder.layer[0].attention.self
    assert (attention.num_attention_heads, attention.all_head_size, attention.query.out_features) == (2, 16, 16)
    assert model.encoder.config.pruned_layout == {"num_heads": [2, HEADS], "intermediate_sizes": [FFN, FFN]}


def test_pruning_ffn_neurons_equals_zeroing_them():
    model, inputs = tiny_model(), padded_inputs()
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        zeroed.encoder.encoder.layer[1].output.dense.weight[:, [0, 5, 9]] = 0
    before = count_parameters(model)

    prune.prune_ffn(model.encoder, {1: [0, 5, 9]})

    assert torch.allclose(logits(model, inputs), logits(zeroed, inputs), atol=1e-6)
    assert before - count_parameters(model) == 3 * (2 * HIDDEN + 1)
    assert model.encoder.encoder.layer[1].intermediate.dense.out_features == FFN - 3
    assert model.encoder.config.pruned_layout == {"num_heads": [HEADS, HEADS], "intermediate_sizes": [FFN, FFN - 3]}


def test_shim_refuses_to_empty_a_layer_or_miss_an_index():
    model = tiny_model()
    with pytest.raises(prune.PruneError, match="keep at least one"):
        prune.prune_heads(model.encoder, {0: range(HEADS)})
    with pytest.raises(prune.PruneError, match="out of range"):
        prune.prune_ffn(model.encoder, {0: [FFN]})


# ---- TextPruner ----------------------------------------------------------------------------------

@pytest.mark.parametrize("labels", [np.arange(24) % 3, np.eye(3, dtype=np.float32)[np.arange(24) % 3]],
                         ids=["multiclass", "multilabel"])
def test_transformer_pruner_reaches_the_targets(labels):
    model = tiny_model()
    prune.prune_transformer(model, batches(labels), target_num_heads=2, target_ffn_size=40, iterations=2)

    assert prune.pruned_layout(model.encoder) == model.encoder.config.pruned_layout == {"num_heads": [2, 2], "intermediate_sizes": [40, 40]}
    layer = model.encoder.encoder.layer[1]
    assert layer.attention.self.query.weight.shape == (2 * HEAD_SIZE, HIDDEN)
    assert layer.output.dense.weight.shape == (HIDDEN, 40)
    assert not hasattr(model.encoder, "prune_heads")  # lent to TextPruner only while it ran
    assert torch.isfinite(logits(model, padded_inputs())).all()
    with pytest.raises(prune.PruneError, match="already transformer-pruned"):
        prune.prune_transformer(model, batches(labels), 1, 20, 1)


def test_vocabulary_pruning_keeps_logits_of_seen_tokens(tokenizer):
    model = tiny_model()
    original = copy.deepcopy(model)
    texts = TEXTS + [KEPT_ONLY]
    old_ids = encoder_of(tokenizer).encode(texts)

    model, pruned = prune.prune_vocabulary(model, tokenizer, TEXTS)

    new_ids = encoder_of(pruned).encode(texts)
    assert model.get_input_embeddings().num_embeddings == len(pruned) == model.encoder.config.vocab_size < 60
    assert [pruned.convert_ids_to_tokens(n) for n in new_ids] == [tokenizer.convert_ids_to_tokens(o) for o in old_ids]
    np.testing.assert_allclose(predict_logits(model, new_ids, pruned.pad_token_id), predict_logits(original, old_ids, 0), atol=1e-6)
    assert encoder_of(pruned).encode(["zebra"])[0][1] == pruned.unk_token_id


def test_unsupported_models_and_tokenizers_are_named(tokenizer):
    distilbert = HFClassifier.from_config(transformers.DistilBertConfig(dim=32, n_layers=1, n_heads=2, hidden_dim=64), 2)
    roberta = HFClassifier.from_config(transformers.RobertaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                                  intermediate_size=64), 2)
    assert "not distilbert" in prune.unsupported_reason(distilbert, "transformer")
    assert prune.unsupported_reason(roberta, "transformer") is None
    assert "WordPiece" in prune.unsupported_reason(roberta, "vocabulary", tokenizer)
    with pytest.raises(prune.PruneError, match="distilbert"):
        prune.prune_transformer(distilbert, [], 1, 32)


# ---- reload and export ---------------------------------------------------------------------------

def pruned(mode: str, tokenizer):
    """(model, tokenizer) pruned by ``mode``."""
    model = tiny_model()
    if mode == "vocabulary":
        return prune.prune_vocabulary(model, tokenizer, TEXTS)
    work = batches(np.arange(24) % 3)
    if mode == "transformer":
        return prune.prune_transformer(model, work, 2, 40, iterations=2), tokenizer
    return prune.prune_pipeline(model, tokenizer, work, TEXTS, 2, 40, iterations=2)


def save(directory, model, tokenizer) -> None:
    save_model_dir(directory, model, encoder_of(tokenizer), ModelConfig(kind="hf", max_length=32),
                   {"classes": CLASSES, "multilabel": False, "threshold": 0.5})


@pytest.mark.parametrize("mode", ["vocabulary", "transformer", "pipeline"])
def test_pruned_model_dir_reloads_with_the_same_logits(mode, tokenizer, tmp_path):
    model, tok = pruned(mode, tokenizer)
    save(tmp_path, model, tok)

    loaded, encoder, _ = load_model_dir(tmp_path)

    ids = encoder.encode(TEXTS + [KEPT_ONLY])
    np.testing.assert_allclose(predict_logits(loaded, ids, encoder.pad_id), predict_logits(model, ids, encoder.pad_id), atol=1e-6)
    assert count_parameters(loaded) == count_parameters(model)


def test_restore_pruned_shapes_lets_a_pruned_state_dict_load(tokenizer, tmp_path):
    """What load_model_dir does once it calls restore_pruned_shapes: config -> model -> shapes -> weights."""
    model, tok = pruned("pipeline", tokenizer)
    save(tmp_path, model, tok)

    rebuilt = HFClassifier.from_config(AutoConfig.from_pretrained(tmp_path / HF_CONFIG_DIR), len(CLASSES))
    restore_pruned_shapes(rebuilt)
    rebuilt.load_state_dict(torch.load(tmp_path / MODEL_FILE, weights_only=True))

    inputs = padded_inputs(vocab_size=len(tok))
    assert torch.allclose(logits(rebuilt.eval(), inputs), logits(model, inputs), atol=1e-6)


def test_pruned_model_exports_to_onnx(tokenizer, tmp_path):
    model, tok = pruned("pipeline", tokenizer)
    path = export_onnx(model, tmp_path / "model.onnx", opset=17)

    ids = encoder_of(tok).encode(TEXTS + [KEPT_ONLY])
    diff = np.abs(onnx_logits(onnx_session(path), ids, tok.pad_token_id) - predict_logits(model, ids, tok.pad_token_id))
    assert diff.max() <= 1e-4


# ---- the stage -----------------------------------------------------------------------------------

def make_run(tmp_path, tokenizer, mode: str, **prune_options) -> tuple[ExperimentConfig, RunDir]:
    """A run directory with data splits and a tiny HF fold model, as training leaves it."""
    cfg = ExperimentConfig(name="tiny", runs_dir=str(tmp_path), data=DataConfig(source="bbc_news"),
                           model=ModelConfig(kind="hf", max_length=32), prune=PruneConfig(mode=mode, **prune_options))
    run = RunDir.create(cfg)
    run.update("data", "done", classes=CLASSES, multilabel=False)
    for name, texts in (("train", TEXTS * 4), ("val", TEXTS), ("test", TEXTS[::-1])):
        run.save_split(name, Split(texts, [i % 3 for i in range(len(texts))]), CLASSES, False)
    save(run.model_dir(0), tiny_model(), tokenizer)
    return cfg, run


def test_prune_stage_writes_a_pruned_model_and_its_report(tokenizer, tmp_path):
    cfg, run = make_run(tmp_path, tokenizer, "pipeline", target_num_heads=2, target_ffn_size=40, iterations=2)

    report = run_prune(cfg, run, log=lambda *_: None)

    assert json.loads((run.root / "prune" / "report.json").read_text()) == json.loads(json.dumps(report))
    assert report["layout"] == {"num_heads": [2, 2], "intermediate_sizes": [40, 40]}
    assert report["settings"] == {"target_num_heads": 2, "target_ffn_size": 40, "iterations": 2, "importance_texts": 24,
                                  "vocabulary_texts": 36}
    assert report["vocab_size"]["after"] < 60 < report["vocab_size"]["before"]
    before, after = report["before"], report["after"]
    assert after["parameters"] < before["parameters"] and after["size_mb"] < before["size_mb"]
    assert {"macro_f1", "accuracy", "texts_per_s"} <= set(after) and report["split"] == "test"
    meta = json.loads((run.root / "prune" / "model" / "model.json").read_text())
    assert meta["prune"]["mode"] == "pipeline" and meta["classes"] == CLASSES


def test_prune_stage_vocabulary_output_loads(tokenizer, tmp_path):
    cfg, run = make_run(tmp_path, tokenizer, "vocabulary")

    report = run_prune(cfg, run, log=lambda *_: None)

    model, encoder, _ = load_model_dir(run.root / "prune" / "model")
    assert model.get_input_embeddings().num_embeddings == report["vocab_size"]["after"] == len(encoder.tokenizer)
    assert report["after"]["accuracy"] == report["before"]["accuracy"]  # the test texts use seen tokens only


def test_prune_stage_skips_a_small_model_and_clears_stale_output(tokenizer, tmp_path):
    cfg, run = make_run(tmp_path, tokenizer, "transformer")
    (run.root / "prune" / "model").mkdir(parents=True)
    (run.model_dir(0) / "model.json").write_text(json.dumps({"classes": CLASSES, "model": {"kind": "small"}}))
    lines = []

    result = run_prune(cfg, run, log=lines.append)

    assert result["status"] == "skipped" and "small model has no transformer encoder" in result["reason"]
    assert not (run.root / "prune").exists() and "skipped" in lines[0]
