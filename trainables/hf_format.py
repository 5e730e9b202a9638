"""A trained hf-kind model directory as a Hugging Face model folder that transformers loads:

- ``config.json``: the encoder's config with ``id2label``/``label2id``, ``problem_type``, the head's
  pooling, and ``auto_map`` naming the modeling file;
- ``model.safetensors``: the encoder's weights under their own names, the head as ``classifier.*``;
- the tokenizer files (``model_max_length`` = the training max_length), and a model card ``README.md``;
- ``modeling_orchestrator.py``: ``OrchestratorForSequenceClassification``, the classifier as trained
  (encoder -> cls or masked-mean pooling -> dropout -> linear).

``AutoModelForSequenceClassification.from_pretrained(DIR, trust_remote_code=True)`` and
``pipeline("text-classification", model=DIR, trust_remote_code=True)`` load it. Remote code is needed
for every pooling: transformers' own *ForSequenceClassification heads put a dense layer and an
activation (BERT's tanh pooler, RoBERTa's and ELECTRA's classification heads) before the linear
classifier, and this project's head is the linear classifier on the pooled hidden state alone.
Small models and T5 have no such form: their portable format is ONNX.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from trainables.atomic import atomic_write_text
from trainables.models import HF_CONFIG_DIR, META_FILE, load_model_dir

MODELING_FILE = "modeling_orchestrator.py"
CLASS_NAME = "OrchestratorForSequenceClassification"
MODELING = '''"""Exported by text-orchestrator (trainables/hf_format.py): a transformers encoder, the pooling it was
trained with (config.orchestrator_pooling: "cls" or "mean") and a linear classifier."""
import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel, {config_class}
from transformers.modeling_outputs import SequenceClassifierOutput


class {class_name}(PreTrainedModel):
    config_class = {config_class}
    base_model_prefix = "encoder"

    def __init__(self, config):
        super().__init__(config)
        self.encoder = AutoModel.from_config(config)
        self.dropout = nn.Dropout(config.orchestrator_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.config.orchestrator_pooling == "cls" and self.config.orchestrator_cls_last:
            last = (attention_mask.sum(1) - 1).clamp(min=0)
            pooled = hidden.gather(1, last[:, None, None].expand(-1, 1, hidden.size(-1))).squeeze(1)
        elif self.config.orchestrator_pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            if self.config.problem_type == "multi_label_classification":
                loss = nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
            else:
                loss = nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)
'''


class NoHFForm(ValueError):
    """The model directory has no Hugging Face form (a small model, T5, or a pruned encoder)."""


def export_hf(model_dir: str | Path, out_dir: str | Path, card: str) -> Path:
    """Write ``model_dir`` (an hf-kind model directory) as a Hugging Face model folder ``out_dir`` with
    the model card ``card``; NoHFForm for models that have none."""
    from safetensors.torch import save_file
    from transformers import AutoConfig

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    meta = json.loads((model_dir / META_FILE).read_text())
    kind = meta["model"]["kind"]
    if kind != "hf":
        raise NoHFForm(f"{model_dir}: a {kind} model has no Hugging Face form; its portable format is ONNX (the export stage)")
    model, text_encoder, _ = load_model_dir(model_dir, "cpu")
    config = AutoConfig.from_pretrained(model_dir / HF_CONFIG_DIR)
    fresh = type(model.encoder)(config).state_dict()
    if any(fresh[k].shape != v.shape for k, v in model.encoder.state_dict().items() if k in fresh):
        raise NoHFForm(f"{model_dir}: its pruned layers are smaller than its config says, which transformers cannot load; "
                       "its portable format is ONNX (the export stage)")
    classes = meta["classes"]
    config.id2label = dict(enumerate(classes))
    config.label2id = {name: i for i, name in enumerate(classes)}
    config.problem_type = "multi_label_classification" if meta["multilabel"] else "single_label_classification"
    config.architectures = [CLASS_NAME]
    config.auto_map = {"AutoModelForSequenceClassification": f"{MODELING_FILE[:-3]}.{CLASS_NAME}"}
    config.orchestrator_pooling = model.pooling
    config.orchestrator_cls_last = model.cls_last
    config.orchestrator_dropout = model.head.dropout.p
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out_dir)
    weights = {(f"classifier.{k[len('head.linear.'):]}" if k.startswith("head.linear.") else k): v.detach().contiguous().clone()
               for k, v in model.state_dict().items()}
    save_file(weights, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    tokenizer = text_encoder.tokenizer
    tokenizer.model_max_length = text_encoder.max_length
    tokenizer.save_pretrained(out_dir)
    atomic_write_text(out_dir / MODELING_FILE, MODELING.format(config_class=type(config).__name__, class_name=CLASS_NAME))
    atomic_write_text(out_dir / "README.md", card)
    return out_dir


def hf_logits(out_dir: str | Path, texts: list[str]) -> torch.Tensor:
    """Logits of the exported folder on ``texts`` through transformers alone (a parity check)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    model = AutoModelForSequenceClassification.from_pretrained(out_dir, trust_remote_code=True).eval()
    with torch.no_grad():
        batch = tokenizer(texts, truncation=True, padding=True, return_tensors="pt")
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
