"""ONNX export of a classifier, ONNX Runtime inference, parity against torch, int8 quantization.

The exported graph keeps the model contract: inputs ``input_ids`` and ``attention_mask`` (int64,
``[batch, sequence]``, both axes dynamic), output ``logits`` ``[batch, classes]``. An export
directory (``export_model_dir``) holds ``model.onnx`` (+ ``model.int8.onnx``), the text encoder,
``model.json`` and ``parity.json``: everything ``load_export_dir`` needs, no torch weights.

Depends on torch/onnx/onnxruntime and trainables only (never on orchestrator or ray).
"""
from __future__ import annotations

import contextlib
import json
import tempfile
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from trainables.atomic import atomic_output
from trainables.inference import predict_logits
from trainables.metrics import predict_labels, probabilities
from trainables.models import META_FILE, load_model_dir
from trainables.models.pruned_shapes import LAYOUT_KEY
from trainables.text.base import TextEncoder
from trainables.text.encoders import load_text_encoder

INPUTS = ("input_ids", "attention_mask")
OUTPUT = "logits"
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
PARITY_FILE = "parity.json"
PARITY_TOL = 1e-4
# The post-export check only has to catch a broken graph (a shape the tracer froze), whose
# logits are off by far more than fp32 rounding; PARITY_TOL is the bar for real data.
EXPORT_CHECK_TOL = 1e-3
TRACE_SHAPE = (2, 8)
CHECK_SHAPES = ((3, 5), (1, 1))
# Dynamic int8 of MatMul covers every Linear on [B, T, D] activations, i.e. nearly all encoder
# weights, and of Attention the fused query/key/value projection (FUSED_MODEL_TYPES). Gemm (2-D heads)
# has no dynamic-int8 kernel; LayerNorm, softmax and embeddings stay fp32.
INT8_OPS = ["MatMul", "Attention"]
# Encoders whose exported graph ONNX Runtime's BERT optimizer (onnxruntime.transformers) fuses into
# its Attention, EmbedLayerNormalization, SkipLayerNormalization and BiasGelu kernels: MiniLM at batch
# 32 ran about 2x faster than the unfused graph (and ~1.2x is all the unfused one gains over torch).
# Exported with eager attention, whose pattern the fusion knows (sdpa's it does not). Not for
# transformer-pruned encoders: their layers have their own head counts, the fusion takes one.
FUSED_MODEL_TYPES = ("bert",)


class ExportError(RuntimeError):
    """A model that cannot be exported to ONNX, or whose exported graph disagrees with torch."""


def model_type(model: nn.Module) -> str:
    """The transformers ``model_type`` of an HF classifier's encoder, else the class name."""
    config = getattr(getattr(model, "encoder", None), "config", None)
    return getattr(config, "model_type", None) or type(model).__name__


def example_inputs(model: nn.Module, batch: int, length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random in-vocabulary ids; row 0 is ``length`` long, later rows shorter and right-padded,
    so tracing sees a real padding mask (an all-ones mask lets some encoders skip masking). On the
    model's device."""
    embedding = model.get_input_embeddings()
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, embedding.num_embeddings, (batch, length), generator=generator)
    lengths = torch.linspace(length, 1, batch).round().long() if batch > 1 else torch.tensor([length])
    mask = (torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)).long()
    pad = embedding.padding_idx if embedding.padding_idx is not None else 0
    return ids.masked_fill(mask == 0, pad).to(embedding.weight.device), mask.to(embedding.weight.device)


class _SessionModule(nn.Module):
    """An ONNX Runtime session behind the model contract, so ``predict_logits`` can batch it."""

    def __init__(self, session):
        super().__init__()
        self.session = session
        # The exporter drops an input the model never reads (a mask-free model has no
        # attention_mask), and ONNX Runtime rejects feeds the graph does not declare.
        self.inputs = {i.name for i in session.get_inputs()}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        feed = {name: x.cpu().numpy() for name, x in feed.items() if name in self.inputs}
        return torch.from_numpy(self.session.run([OUTPUT], feed)[0])


def _check_export(model: nn.Module, path: Path) -> None:
    """Raise ``ExportError`` if the graph at ``path`` disagrees with ``model`` on shapes it was not
    traced with."""
    module = _SessionModule(onnx_session(path))
    for batch, length in CHECK_SHAPES:
        inputs = example_inputs(model, batch, length, seed=1)
        with torch.inference_mode():
            diff = (model(*inputs).cpu() - module(*inputs)).abs().max().item()
        if not diff <= EXPORT_CHECK_TOL:  # also catches NaN
            raise ExportError(f"{model_type(model)}: the ONNX graph disagrees with torch at batch {batch} x length "
                              f"{length} (max |diff| {diff:.3g}); the tracer probably froze a shape-dependent branch")


def fusable(model: nn.Module) -> bool:
    """Whether ``export_onnx`` fuses the model's graph (see ``FUSED_MODEL_TYPES``)."""
    config = getattr(getattr(model, "encoder", None), "config", None)
    return model_type(model) in FUSED_MODEL_TYPES and not getattr(config, LAYOUT_KEY, None)


def fuse_graph(path: Path, model: nn.Module) -> None:
    """Rewrite the ONNX graph at ``path`` (a ``fusable`` model's, exported with eager attention) with
    ONNX Runtime's BERT fusions, in place."""
    from onnxruntime.transformers.optimizer import optimize_model

    config = model.encoder.config
    optimized = optimize_model(str(path), model_type="bert", num_heads=config.num_attention_heads,
                               hidden_size=config.hidden_size)
    optimized.save_model_to_file(str(path))


def export_onnx(model: nn.Module, path: str | Path, opset: int = 17, fuse: bool = True) -> Path:
    """Export ``model`` (eval mode) with dynamic batch and sequence axes, fuse its graph when it is
    ``fusable`` (and ``fuse``), check it against torch on other shapes, then move it to ``path``.
    Raises ``ExportError`` naming the model type."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {**{name: {0: "batch", 1: "sequence"} for name in INPUTS}, OUTPUT: {0: "batch"}}
    fuse = fuse and fusable(model)
    was_training = model.training
    model.eval()
    try:
        with atomic_output(path) as tmp:
            try:
                with warnings.catch_warnings(), _eager_if(fuse, model):
                    # The exporter warns of every Python branch on a shape and of ops that may
                    # misbehave at other batch sizes (LSTM), which _check_export tests, and that it
                    # is the legacy exporter, which is a choice: the dynamo one needs onnxscript.
                    warnings.simplefilter("ignore")
                    torch.onnx.export(model, example_inputs(model, *TRACE_SHAPE), str(tmp), input_names=list(INPUTS),
                                      output_names=[OUTPUT], dynamic_axes=axes, opset_version=opset, dynamo=False)
            except Exception as e:
                raise ExportError(f"{model_type(model)}: ONNX export (opset {opset}) failed: "
                                  f"{type(e).__name__}: {e}") from e
            if fuse:
                fuse_graph(tmp, model)
            _check_export(model, tmp)
    finally:
        model.train(was_training)
    return path


def _eager_if(enabled: bool, model: nn.Module):
    if not enabled:
        return contextlib.nullcontext()
    from trainables.models.hf import eager_attention

    return eager_attention(True, model)


def onnx_session(path: str | Path, threads: Optional[int] = None):
    """A CPU ``onnxruntime.InferenceSession`` with all graph optimizations; ``threads`` caps the
    intra-op pool (default: one thread per physical core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_logits(session, ids: Sequence[Sequence[int]], pad_id: int, batch_size: int = 64) -> np.ndarray:
    """Logits [N, C] in input order, batched by length exactly as ``predict_logits`` does."""
    return predict_logits(_SessionModule(session), ids, pad_id, batch_size)


def compare_logits(reference: np.ndarray, other: np.ndarray, multilabel: bool = False,
                   threshold: float | Sequence[float] = 0.5) -> dict:
    """max/mean |diff| of two [N, C] logit arrays (N > 0) and how often their predicted labels agree."""
    if not len(reference):
        raise ValueError("parity needs at least one text")
    diff = np.abs(np.asarray(reference, dtype=np.float64) - np.asarray(other, dtype=np.float64))
    labels = [predict_labels(probabilities(x, multilabel), multilabel, threshold) for x in (reference, other)]
    same_rows = (labels[0] == labels[1]).reshape(len(diff), -1).all(axis=1)
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "agreement": float(same_rows.mean()), "same_predictions": bool(same_rows.all()), "n": len(diff)}


def parity_check(model: nn.Module, session, ids: Sequence[Sequence[int]], pad_id: int, batch_size: int = 64,
                 multilabel: bool = False, threshold: float | Sequence[float] = 0.5) -> dict:
    """``compare_logits`` of torch (reference) and ONNX Runtime on ``ids``."""
    return compare_logits(predict_logits(model, ids, pad_id, batch_size), onnx_logits(session, ids, pad_id, batch_size),
                          multilabel, threshold)


def quantize_int8(fp32_path: str | Path, int8_path: str | Path) -> Path:
    """Dynamic quantization: int8 weights (per output channel) of ``INT8_OPS``, activations
    quantized on the fly."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    int8_path = Path(int8_path)
    with tempfile.TemporaryDirectory(dir=int8_path.parent) as scratch, atomic_output(int8_path) as tmp:
        # Pre-processing (ONNX Runtime constant folding, ONNX shape inference) shrinks the result:
        # without it tiny DeBERTa-v3's int8 file was 1.19x fp32, with it 0.72x. Symbolic shape
        # inference is skipped: it gives up on HF attention masks (Min(max_position, sequence)).
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(Path(fp32_path), prepared, skip_symbolic_shape=True)
        # reduce_range (7-bit weights) avoids the int16 saturation of u8s8 products on AVX2/AVX-512
        # CPUs without VNNI, which may be where the model is served.
        # ONNX shape inference cannot type the outputs of ONNX Runtime's fused ops (com.microsoft
        # domain): they are fp32, like every activation of an fp32 export.
        quantize_dynamic(prepared, tmp, op_types_to_quantize=INT8_OPS, per_channel=True, reduce_range=True,
                         weight_type=QuantType.QInt8, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return int8_path


def load_export_dir(directory: str | Path, int8: bool = False,
                    threads: Optional[int] = None) -> tuple[object, TextEncoder, dict]:
    """(ONNX Runtime session, text encoder, meta) from an ``export_model_dir`` directory."""
    directory = Path(directory)
    session = onnx_session(directory / (INT8_FILE if int8 else ONNX_FILE), threads)
    return session, load_text_encoder(directory), json.loads((directory / META_FILE).read_text())


def _write_text(path: Path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def export_model_dir(model_dir: str | Path, out_dir: str | Path, ids_for_parity: Sequence[Sequence[int]],
                     int8: bool = False, opset: int = 17, threads: Optional[int] = None) -> dict:
    """Export a model directory to a self-contained ONNX directory and write ``parity.json``.

    Parity is torch vs ONNX fp32 on ``ids_for_parity`` (``ok``: max |diff| <= ``PARITY_TOL`` and
    identical predicted labels); with ``int8``, ``parity["int8"]`` compares the int8 model with fp32
    ONNX (agreement of predicted labels, |diff|, file size ratio). ``threads``: ONNX Runtime
    intra-op threads for the parity runs.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    model, encoder, meta = load_model_dir(model_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fp32_path = export_onnx(model, out_dir / ONNX_FILE, opset)
    encoder.save(out_dir)
    _write_text(out_dir / META_FILE, (model_dir / META_FILE).read_text(encoding="utf-8"))

    labels = dict(multilabel=meta["multilabel"], threshold=meta.get("threshold", 0.5))
    fp32 = onnx_logits(onnx_session(fp32_path, threads), ids_for_parity, encoder.pad_id)
    parity = compare_logits(predict_logits(model, ids_for_parity, encoder.pad_id), fp32, **labels)
    ok = parity["max_abs_diff"] <= PARITY_TOL and parity["same_predictions"]
    parity.update(opset=opset, tolerance=PARITY_TOL, ok=ok)
    if int8:
        int8_path = quantize_int8(fp32_path, out_dir / INT8_FILE)
        int8_logits = onnx_logits(onnx_session(int8_path, threads), ids_for_parity, encoder.pad_id)
        parity["int8"] = {**compare_logits(fp32, int8_logits, **labels),
                          "size_ratio": int8_path.stat().st_size / fp32_path.stat().st_size}
    else:  # a re-export must not leave an int8 model of the old weights behind
        (out_dir / INT8_FILE).unlink(missing_ok=True)
    _write_text(out_dir / PARITY_FILE, json.dumps(parity, indent=2))
    return parity
