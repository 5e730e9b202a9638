"""Distillation: the teacher-logit hook, TextBrewer self-distillation, and the distill stage end to end."""
from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from orchestrator.rundir import RunDir
from orchestrator.config import ConfigError, ModelConfig, TrainConfig, load_config, with_overrides
from orchestrator.stages.distill import run_distill
from tests.conftest import ROOT
from trainables.distill import (TeacherDistillation, TeacherTargets, average_teachers, shallower_copy, self_distill,
                                teacher_adaptor)
from trainables.hooks import TrainState
from trainables.inference import predict_logits
from trainables.loop import FoldData, Trainer
from trainables.metrics import compute_metrics
from trainables.models import load_model_dir
from trainables.models.small import build_small_model

C = 3


class RowLogits(nn.Module):
    """Logits looked up by the first token (= the row index): a student whose outputs are fixed."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(logits.clone())

    def forward(self, input_ids, attention_mask):
        return self.table[input_ids[:, 0]]


def state_and_batch(student: torch.Tensor, rows: list[int], epoch: int = 0, labels=None):
    state = TrainState(model=RowLogits(student), optimizer=None, loss_fn=F.cross_entropy, epoch=epoch)
    index = torch.tensor(rows)
    labels = torch.zeros(len(rows), dtype=torch.long) if labels is None else labels
    return state, {"input_ids": index[:, None], "attention_mask": torch.ones(len(rows), 1, dtype=torch.long),
                   "labels": labels, "index": index}


def test_alpha_one_mse_is_the_mse_to_the_teacher_rows():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, C, generator=g), torch.randn(1, 6, C, generator=g)
    rows = [4, 1, 3]
    state, batch = state_and_batch(student, rows)
    loss = TeacherDistillation(teacher, kind="mse", alpha=1.0).loss(state, batch)
    assert torch.allclose(loss, F.mse_loss(student[rows], teacher[0, rows]))
    labels = torch.tensor([2, 0, 1])
    state, batch = state_and_batch(student, rows, labels=labels)
    mixed = TeacherDistillation(teacher, kind="mse", alpha=0.25).loss(state, batch)
    expected = 0.25 * F.mse_loss(student[rows], teacher[0, rows]) + 0.75 * F.cross_entropy(student[rows], labels)
    assert torch.allclose(mixed, expected)


def test_take_turns_switches_teacher_each_epoch_and_average_is_the_mean():
    g = torch.Generator().manual_seed(1)
    student, teachers = torch.randn(5, C, generator=g), torch.randn(2, 5, C, generator=g)
    rows = [0, 2, 4]
    hook = TeacherDistillation(teachers, kind="mse", alpha=1.0, mix="take_turns")
    for epoch, k in ((0, 0), (1, 1), (2, 0)):
        state, batch = state_and_batch(student, rows, epoch=epoch)
        assert torch.allclose(hook.loss(state, batch), F.mse_loss(student[rows], teachers[k, rows]))
    mean = TeacherTargets(teachers, "average")(3, torch.tensor(rows))
    assert torch.allclose(mean, teachers.mean(0)[rows])


def test_multilabel_average_is_in_probability_space():
    logits = torch.tensor([[[8.0, -1.0]], [[-2.0, -1.0]]])  # one confident teacher must not decide class 0
    averaged = average_teachers(logits, multilabel=True)
    assert torch.allclose(torch.sigmoid(averaged), torch.sigmoid(logits).mean(0), atol=1e-6)
    assert not torch.allclose(averaged, logits.mean(0))


def marker_data(n: int, seed: int) -> tuple[list[list[int]], np.ndarray]:
    """Noise tokens 4..29 with one marker token 1..3 at a random place; the marker is the class."""
    g = np.random.default_rng(seed)
    ids, classes = [], g.integers(0, C, n)
    for c in classes:
        row = list(g.integers(4, 30, g.integers(5, 12)))
        row.insert(int(g.integers(0, len(row))), int(c) + 1)
        ids.append(row)
    return ids, classes


def test_textcnn_student_fits_a_fixed_teacher_through_the_trainer():
    ids, classes = marker_data(240, seed=0)
    teacher = torch.from_numpy(np.eye(C, dtype=np.float32)[classes] * 4.0)[None]  # confident: the marker's class
    wrong = (classes + 1) % C  # hard labels that disagree with the teacher everywhere: alpha=1 ignores them
    data = FoldData(ids[:200], wrong[:200], ids[200:], classes[200:], pad_id=0, num_classes=C)
    model_cfg = ModelConfig(kind="small", arch="textcnn", embedding_dim=16, num_filters=16, kernel_sizes=[1, 2], dropout=0.0,
                                multi_sample_dropout=1, init="default", pretrained_vectors=None)
    torch.manual_seed(0)
    model = build_small_model(model_cfg, C, SimpleNamespace(itos=[str(i) for i in range(30)], pad_id=0, max_length=16))
    cfg = TrainConfig(epochs=6, batch_size=16, lr=1e-2, weight_decay=0.0, early_stopping_patience=None, warmup_ratio=0.0)
    hook = TeacherDistillation(teacher[:, :200], kind="kl", temperature=2.0, alpha=1.0)
    trainer = Trainer(model, data, cfg, extra_hooks=[hook])
    trainer.fit()
    agreement = (predict_logits(model, data.train_ids, 0).argmax(1) == classes[:200]).mean()
    assert agreement >= 0.95
    assert trainer.fit_state.history[-1]["val_accuracy"] >= 0.9


def tiny_bert(vocab_size: int = 40, classes: int = C, seed: int = 0):
    """A random 4-layer BERT classifier, 16 wide, without dropout."""
    from transformers import BertConfig

    from trainables.models.hf import HFClassifier

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return HFClassifier.from_config(config, classes, dropout=0.0)


def test_shallower_copy_takes_the_chosen_teacher_layers():
    teacher = tiny_bert()
    student = shallower_copy(teacher, [1, 3])
    assert student.encoder.config.num_hidden_layers == 2 and len(student.encoder.encoder.layer) == 2
    for s, t in ((0, 1), (1, 3)):
        for (name, p), q in zip(student.encoder.encoder.layer[s].named_parameters(), teacher.encoder.encoder.layer[t].parameters()):
            assert torch.equal(p, q), name
    assert torch.equal(student.encoder.embeddings.word_embeddings.weight, teacher.encoder.embeddings.word_embeddings.weight)
    assert torch.equal(student.head.linear.weight, teacher.head.linear.weight)
    with pytest.raises(ValueError, match="student_layers"):
        shallower_copy(teacher, [1, 4])


def test_self_distill_4_to_2_layers_uses_the_intermediate_matches():
    teacher = tiny_bert()
    ids, classes = marker_data(96, seed=1)
    data = FoldData([[t + 5 for t in row] for row in ids[:64]], classes[:64], [[t + 5 for t in row] for row in ids[64:]],
                    classes[64:], pad_id=0, num_classes=C)
    cfg = TrainConfig(epochs=4, batch_size=16, lr=3e-3, weight_decay=0.0, warmup_ratio=0.0)
    student, history = self_distill(teacher, [1, 3], data, cfg, intermediate=["hidden", "attention"], temperature=2.0)
    assert student.encoder.config.num_hidden_layers == 2 and len(history) == 4
    assert teacher.encoder.config._attn_implementation == "sdpa"  # eager only while distilling
    first, last = history[0], history[-1]
    matched = [k for k in first if k.startswith(("train_hidden_", "train_attention_"))]
    assert len(matched) == 3 + 2  # embeddings + 2 layers' hidden states, 2 layers' attentions
    mapped = [k for k in matched if k.startswith("train_hidden_") and not k.endswith("_0_0")]
    assert sorted(mapped) == ["train_hidden_hidden_mse_1_2", "train_hidden_hidden_mse_2_4"]  # student i+1 <-> teacher layers[i]+1
    assert all(last[k] < first[k] for k in mapped) and last["train_total_loss"] < first["train_total_loss"]
    assert {"val_macro_f1", "train_kd_loss", "train_hard_label_loss"} <= set(first)


def test_self_distill_teacher_adaptor_takes_the_turn_teachers_logits():
    teachers = torch.arange(2 * 4 * C, dtype=torch.float32).reshape(2, 4, C)
    targets = TeacherTargets(teachers, "take_turns")
    outputs = (torch.zeros(2, C), SimpleNamespace(hidden_states=(torch.zeros(1),), attentions=None))
    batch = {"index": torch.tensor([3, 1])}
    for epoch in (0, 1):
        features = teacher_adaptor(targets, SimpleNamespace(epoch=epoch), batch, outputs)
        assert torch.equal(features["logits"], teachers[epoch, [3, 1]]) and "attention" not in features


SMOKE = ROOT / "experiments" / "smoke.yaml"
TINY_TRAIN = {"epochs": 2, "batch_size": 32, "lr": 1e-2, "schedule": "constant", "weight_decay": 0.0, "cpus_per_worker": 1}


@pytest.fixture
def smoke_copy(smoke_run, tmp_path):
    """A private copy of the session's smoke run, with a tiny cross-mode student configured."""
    root = tmp_path / "runs" / "smoke"
    shutil.copytree(smoke_run.run.root, root)
    cfg = with_overrides(load_config(SMOKE), {
        "runs_dir": str(tmp_path / "runs"), "distill.enabled": True, "distill.temperature": 1.0,
        "distill.student": {"kind": "small", "arch": "textcnn", "tokens": "char", "max_length": 64, "embedding_dim": 16,
                            "num_filters": 16, "kernel_sizes": [2, 3], "vocab_size": 3000},
        "distill.train": TINY_TRAIN,
    })
    return cfg, RunDir(root)


def test_run_distill_cross_writes_student_and_report_and_caches_teacher_logits(smoke_copy):
    cfg, run = smoke_copy
    lines = []
    report = run_distill(cfg, run, log=lines.append)
    folder = run.root / "distill"
    _, _, meta = load_model_dir(folder / "model")
    assert meta["classes"] == run.stage("data")["classes"] and meta["model"]["embedding_dim"] == 16
    assert json.loads((folder / "report.json").read_text()) == json.loads(json.dumps(report))
    assert report["teacher_logits"] == "computed" and report["split"] == "val" and report["config"]["mode"] == "cross"
    for side in ("student", "teacher"):
        assert {"macro_f1", "accuracy", "parameters", "size_mb", "texts_per_s"} <= set(report[side])
        assert report[side]["size_mb"] > 0 and report[side]["texts_per_s"] > 0
    assert report["student"]["parameters"] < report["teacher"]["parameters"]
    assert report["student"]["macro_f1"] > 0.7  # 2 epochs on 600 rows of real data: well above chance (0.5)
    history = json.loads((folder / "history.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    pool_rows = sum(len((run.root / "data" / f"{name}.jsonl").read_text().splitlines()) for name in ("train", "val"))
    assert np.load(folder / "teacher_logits.npy").shape == (1, pool_rows, 2)  # one fold model, every pooled row
    cached_at = (folder / "teacher_logits.npy").stat().st_mtime_ns

    again = run_distill(with_overrides(cfg, {"distill.alpha": 1.0}), run, log=lines.append)  # another student, same teachers
    assert again["teacher_logits"] == "cached" and (folder / "teacher_logits.npy").stat().st_mtime_ns == cached_at
    assert again["config"]["alpha"] == 1.0 and any("reused from" in line for line in lines)


def test_self_mode_needs_an_hf_teacher(smoke_copy):
    cfg, run = smoke_copy
    with pytest.raises(ConfigError, match="distill.mode"):
        run_distill(with_overrides(cfg, {"distill.mode": "self"}), run)


@pytest.fixture
def bert_run(tmp_path):
    """A run directory as the pipeline leaves it, written with its own helpers, whose 2 fold models are
    tiny random 4-layer BERTs over a character vocabulary (self mode's mechanics need no trained teacher)."""
    from transformers import BertTokenizerFast

    from orchestrator.data import load_dataset
    from trainables.models import save_model_dir
    from trainables.text.hf import HFTextEncoder

    cfg = with_overrides(load_config(SMOKE), {
        "runs_dir": str(tmp_path / "runs"), "name": "bert", "data.max_rows": 200, "data.test_fraction": 0.2,
        "model": {"kind": "hf", "name": "tiny-random-bert", "max_length": 32}, "cv.folds": 2,
        "distill.enabled": True, "distill.mode": "self", "distill.student_layers": [1, 3],
        "distill.intermediate": ["hidden", "attention"], "distill.teacher_mix": "take_turns", "distill.train": TINY_TRAIN,
    })
    dataset = load_dataset(cfg.data, cfg.seed)
    run = RunDir.create(cfg)
    run.update("data", "done", classes=dataset.classes, multilabel=False)
    for name in ("train", "val", "test"):
        run.save_split(name, getattr(dataset, name), dataset.classes, False)
    chars = sorted({c for t in dataset.train.texts for c in t})
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars]) + "\n", encoding="utf-8")
    encoder = HFTextEncoder(BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")), max_length=32)
    for fold in range(2):
        model = tiny_bert(vocab_size=len(chars) + 5, classes=len(dataset.classes), seed=fold)
        save_model_dir(run.model_dir(fold), model, encoder, cfg.model,
                       {"classes": dataset.classes, "multilabel": False, "threshold": 0.5, "experiment": cfg.name})
    return cfg, run


def test_run_distill_self_mode_distils_the_ensemble_into_2_layers(ray_session, bert_run):
    cfg, run = bert_run
    report = run_distill(cfg, run, log=lambda *_: None)
    student, _, meta = load_model_dir(run.root / "distill" / "model")
    assert student.encoder.config.num_hidden_layers == 2 and meta["model"]["kind"] == "hf"
    assert np.load(run.root / "distill" / "teacher_logits.npy").shape[0] == 2  # both folds teach, in turns
    assert report["split"] == "test" and report["teacher"]["models"] == 2 and report["student"]["models"] == 1
    assert report["student"]["model"].endswith("(2 layers)") and report["teacher"]["model"].endswith("(4 layers)")
    fold_params = sum(p.numel() for p in load_model_dir(run.model_dir(0))[0].parameters())
    layer_params = sum(p.numel() for p in student.encoder.encoder.layer[0].parameters())
    assert report["teacher"]["parameters"] == 2 * fold_params and report["student"]["parameters"] == fold_params - 2 * layer_params
    history = json.loads((run.root / "distill" / "history.json").read_text())["history"]
    assert len(history) == 2 and "train_attention_attention_mse_0_1" in history[0]


def test_run_distill_cross_into_an_hf_student_learns_the_weighted_ensemble_and_reloads(ray_session, bert_run, tmp_path):
    """The ensemble (2 BERT members weighted 0.75/0.25 by ensemble.json) distilled into an HF student
    (a local transformers folder) through the cross stage; the student reloads and predicts as reported."""
    from transformers import BertModel, BertTokenizerFast

    from orchestrator.evaluate.ensemble import Ensemble, combine
    from orchestrator.evaluate.measure import evaluation_data

    cfg, run = bert_run
    for fold in range(2):  # as the pipeline leaves them: trial folders named by ensemble.json
        (run.root / "trials" / f"t{fold}").mkdir(parents=True)
        shutil.move(str(run.model_dir(fold)), run.root / "trials" / f"t{fold}" / "model")
    (run.root / "ensemble.json").write_text(json.dumps({"kind": "selection", "members": [
        {"name": "fold_0", "trial_id": "t0", "weight": 0.75}, {"name": "config1_fold_0", "trial_id": "t1", "weight": 0.25}]}))
    student_dir = tmp_path / "student-bert"
    teacher = Ensemble([m.model_dir for m in run.ensemble_members()])
    BertModel(teacher.models[0].encoder.config).save_pretrained(student_dir)
    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(student_dir)
    cfg = with_overrides(cfg, {"distill.mode": "cross", "distill.teacher_mix": "average",
                               "distill.student": {"kind": "hf", "name": str(student_dir), "max_length": 32, "pooling": "cls"}})
    report = run_distill(cfg, run, log=lambda *_: None)
    assert np.load(run.root / "distill" / "teacher_logits.npy").shape[0] == 2
    texts, gold = evaluation_data(run)
    weighted = combine(teacher.fold_logits(teacher.encode(texts)), False, [0.75, 0.25])
    assert report["teacher"]["macro_f1"] == pytest.approx(compute_metrics(gold, weighted, False)["macro_f1"], abs=1e-9)
    student, encoder, meta = load_model_dir(run.root / "distill" / "model")
    assert meta["model"]["kind"] == "hf" and student.encoder.config.num_hidden_layers == 4
    reloaded = Ensemble([run.root / "distill" / "model"]).predict_proba(texts)
    assert report["student"]["macro_f1"] == pytest.approx(compute_metrics(gold, reloaded, False)["macro_f1"], abs=1e-9)
