"""T5 text-to-text classification under the common model contract.

The target of a text is its class name. Instead of generating, ``T5Classifier`` scores every class
name: ``logits[b, c] = log p(tokens of class c, </s> | prefix + text b)``, the sum of the
teacher-forced token log-probabilities. Predictions are an argmax over the classes, so no output
is ever an invalid label, and the one training loop, the fold ensemble and the metrics use these
scores like any other logits.

The scores are not length-normalised: summed, they are exact sequence log-probabilities, so
``softmax(logits)`` is the model's posterior restricted to the class set and ``-logits[gold]`` is
the text-to-text training loss (``trainables.tricks.losses.seq2seq_nll``). A per-token mean (the usual
zero-shot remedy for a bias towards short names) would break both identities, and fine-tuning
teaches the model the class names, which leaves no such bias to correct.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from trainables.pretrained import resolve_pretrained


class T5Classifier(nn.Module):
    """``forward(input_ids, attention_mask) -> [B, C]`` log-probabilities of the C class names,
    all scored in one batched decoder pass (each encoded text repeated C times)."""

    def __init__(self, t5: nn.Module, class_token_ids: Sequence[Sequence[int]]):
        super().__init__()
        self.t5 = t5
        self.class_token_ids = [list(map(int, ids)) for ids in class_token_ids]
        if any(not ids for ids in self.class_token_ids):
            raise ValueError("T5Classifier: a class name has no tokens")
        if len({tuple(ids) for ids in self.class_token_ids}) < len(self.class_token_ids):
            raise ValueError("T5Classifier: two class names have the same tokens, so they cannot be told apart")
        config = t5.config
        rows = [torch.as_tensor(ids, dtype=torch.long) for ids in self.class_token_ids]
        targets = nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=config.pad_token_id)
        lengths = torch.as_tensor([len(ids) for ids in rows])
        start = torch.full_like(targets[:, :1], config.decoder_start_token_id)
        # not persistent: the state dict holds only T5's weights; the ids live in model.json
        self.register_buffer("targets", targets, persistent=False)
        self.register_buffer("target_mask", torch.arange(targets.shape[1]) < lengths[:, None], persistent=False)
        self.register_buffer("decoder_input_ids", torch.cat([start, targets[:, :-1]], 1), persistent=False)

    @classmethod
    def from_pretrained(cls, name: str, class_token_ids: Sequence[Sequence[int]]) -> "T5Classifier":
        from transformers import T5ForConditionalGeneration

        return cls(T5ForConditionalGeneration.from_pretrained(resolve_pretrained(name)), class_token_ids)

    @classmethod
    def from_config(cls, config, class_token_ids: Sequence[Sequence[int]]) -> "T5Classifier":
        from transformers import T5ForConditionalGeneration

        return cls(T5ForConditionalGeneration(config), class_token_ids)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.t5.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        batch, classes = input_ids.shape[0], self.targets.shape[0]
        encoded = self.t5.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        # row b * C + c pairs text b with class name c
        logits = self.t5(
            encoder_outputs=(encoded.repeat_interleave(classes, 0),),
            attention_mask=attention_mask.repeat_interleave(classes, 0),
            decoder_input_ids=self.decoder_input_ids.repeat(batch, 1),
            use_cache=False,
        ).logits.float()
        targets = self.targets.repeat(batch, 1)
        # log_softmax at the targets only: no second [B*C, T, V] tensor
        token_logp = logits.gather(-1, targets[..., None]).squeeze(-1) - logits.logsumexp(-1)
        return (token_logp * self.target_mask.repeat(batch, 1)).sum(-1).view(batch, classes)
