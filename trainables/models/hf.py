"""Any transformers encoder (BERT, RoBERTa, ALBERT, XLNet, ELECTRA, DeBERTa-v3, XLM-R, MiniLM, ...)
with a pooled classifier head."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from trainables.models.head import ClassifierHead
from trainables.pretrained import resolve_pretrained

class HFClassifier(nn.Module):
    """``forward(input_ids, attention_mask) -> logits``; pooling is the [CLS] token (first, or last for
    XLNet) or the masked mean."""

    def __init__(self, encoder: nn.Module, num_classes: int, dropout: float = 0.1, samples: int = 1, pooling: str = "mean"):
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        # XLNet's tokenizer puts <cls> last ("A <sep> <cls>"); collate pads on the right, so it is the last real token
        self.cls_last = encoder.config.model_type == "xlnet"
        self.head = ClassifierHead(encoder.config.hidden_size, num_classes, dropout, samples)

    @classmethod
    def from_pretrained(cls, name: str, num_classes: int, **kwargs) -> "HFClassifier":
        from transformers import AutoModel

        return cls(AutoModel.from_pretrained(resolve_pretrained(name)), num_classes, **kwargs)

    @classmethod
    def from_config(cls, config, num_classes: int, **kwargs) -> "HFClassifier":
        from transformers import AutoModel

        return cls(AutoModel.from_config(config), num_classes, **kwargs)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls" and self.cls_last:
            last = (attention_mask.sum(1) - 1).clamp(min=0)
            pooled = hidden.gather(1, last[:, None, None].expand(-1, 1, hidden.size(-1))).squeeze(1)
        elif self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(pooled)


@contextlib.contextmanager
def eager_attention(enabled: bool, *models: HFClassifier) -> Iterator[None]:
    """Eager attention inside (sdpa returns no attention maps, and its exported graph is not one that
    ONNX Runtime's attention fusion recognises), each model's own setting after."""
    before = [m.encoder.config._attn_implementation for m in models]
    try:
        for m in models if enabled else ():
            m.encoder.set_attn_implementation("eager")
        yield
    finally:
        for m, implementation in zip(models, before):
            m.encoder.set_attn_implementation(implementation)
