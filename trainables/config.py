"""The typed config sections the data plane reads: ``ModelConfig`` (what to build) and
``TrainConfig`` (how to train it). The experiment schema (orchestrator/config.py) nests them; the
training loop, the model builders and the tricks take them as they are.

Every field has a default and a one-line description where it is declared.
"""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignment is validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class ModelConfig(Section):
    kind: Literal["hf", "small", "t5"] = Field("hf", description="hf: a transformers encoder; small: a model trained from scratch; t5: text-to-text.")
    name: str = Field("minilm-l6", description="hf/t5: built-in alias (minilm-l6), hub id or local path.")
    arch: Literal["fasttext", "textcnn", "textrnn", "textrcnn", "transformer"] = Field("textcnn", description="small: the architecture.")
    tokens: Literal["char", "word"] = Field("char", description="small: tokenize into characters or words (Chinese words through jieba).")
    max_length: int = Field(128, ge=8, le=4096, description="Tokens per text after truncation.")
    vocab_size: int = Field(30000, ge=100, description="small: largest vocabulary (most frequent tokens).")
    min_freq: int = Field(1, ge=1, description="small: a token must occur this often in train to enter the vocabulary.")
    embedding_dim: int = Field(128, ge=8, description="small: embedding width.")
    hidden_size: int = Field(128, ge=8, description="small: hidden width of RNN / transformer / RCNN layers.")
    num_layers: int = Field(1, ge=1, description="small: number of recurrent or transformer layers.")
    num_filters: int = Field(128, ge=1, description="textcnn: filters per kernel size.")
    kernel_sizes: list[int] = Field(default_factory=lambda: [2, 3, 4], description="textcnn: convolution widths.")
    rnn_type: Literal["lstm", "gru"] = Field("lstm", description="textrnn/textrcnn: recurrent cell.")
    bidirectional: bool = Field(True, description="textrnn/textrcnn: run the RNN both ways.")
    num_heads: int = Field(4, ge=1, description="transformer: attention heads.")
    pretrained_vectors: Optional[str] = Field(None, description="small: word-vector text file (token v1 v2 ...) to initialise embeddings.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout before the classifier.")
    multi_sample_dropout: int = Field(1, ge=1, le=16, description="Average the head over this many dropout masks (1 = plain head).")
    init: Literal["default", "xavier", "kaiming", "normal"] = Field("default", description="Weight init of non-pretrained weights.")
    pooling: Literal["cls", "mean"] = Field("mean", description="hf: sentence vector from the [CLS] token or the masked mean.")
    prefix: str = Field("classify: ", description="t5: text put before every input.")


class TrainConfig(Section):
    epochs: int = Field(3, ge=1, description="Passes over the training data.")
    batch_size: int = Field(32, ge=1, description="Examples per optimizer step per worker (before accumulation).")
    eval_batch_size: int = Field(64, ge=1, description="Examples per batch in evaluation.")
    lr: float = Field(5e-5, gt=0, description="Peak learning rate of the encoder / body.")
    head_lr: Optional[float] = Field(None, gt=0, description="Learning rate of the classifier head (default: lr).")
    layer_lr_decay: Optional[float] = Field(None, gt=0, le=1, description="LLRD: each encoder layer's lr is the layer above's x this; the embeddings lowest (null = off).")
    weight_decay: float = Field(0.01, ge=0, description="Decoupled weight decay (not on biases and norms).")
    optimizer: Literal["adamw", "adam", "sgd", "adafactor"] = Field("adamw", description="Optimizer.")
    schedule: Literal["linear", "cosine", "constant", "adafactor"] = Field("linear", description="Decay after warmup; adafactor: Adafactor's own relative-step lr (optimizer: adafactor only).")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of steps with linear warmup.")
    grad_clip: Optional[float] = Field(1.0, gt=0, description="Clip the gradient norm at this value (null = off).")
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step.")
    loss: Literal["ce", "focal", "poly", "bce", "zlpr", "seq2seq"] = Field("ce", description="Loss: ce/focal/poly (multiclass), bce/zlpr (multilabel), seq2seq (t5: NLL of the gold class name).")
    focal_gamma: float = Field(2.0, ge=0, description="focal: focusing exponent.")
    poly_epsilon: float = Field(1.0, description="poly: weight of the poly-1 term.")
    class_weights: Union[Literal["none", "balanced"], list[float]] = Field("none", description="Per-class loss weights: none, balanced, or a list.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing for ce.")
    rdrop_alpha: float = Field(0.0, ge=0, description="R-Drop: weight of the KL between two dropout passes (0 = off).")
    adversarial: Literal["none", "fgm", "pgd", "freelb", "awp"] = Field("none", description="Adversarial training.")
    adv_epsilon: float = Field(1.0, gt=0, description="Adversarial perturbation size.")
    adv_steps: int = Field(3, ge=1, description="pgd/freelb: ascent steps.")
    ema_decay: Optional[float] = Field(None, gt=0, lt=1, description="Keep an EMA of the weights with this decay; evaluate with it.")
    swa_start_epoch: Optional[int] = Field(None, ge=1, description="Average weights (SWA) from this epoch on.")
    noisytune: float = Field(0.0, ge=0, description="NoisyTune: uniform noise scaled by each weight's std before training (0 = off).")
    amp: Literal["auto", "off", "fp16", "bf16"] = Field("auto", description="Mixed precision: auto = fp16 on CUDA, off on CPU.")
    sampler: Literal["bucket", "random", "weighted"] = Field("bucket", description="bucket: length-bucketed batches; weighted: WeightedRandomSampler.")
    bucket_pool: int = Field(50, ge=1, description="bucket: batches per pool sorted by length (small = label mix near the data's, large = least padding).")
    bucket_noise: float = Field(0.0, ge=0, lt=1, description="bucket: sort on length x (1 + uniform(-noise, noise)) so near-equal lengths mix across batches.")
    bucket_stratify: bool = Field(True, description="bucket: batch rows by length quantile within their own class, so every batch keeps the pool's label mix.")
    log_every_steps: int = Field(10, ge=1, description="Log the mean train loss every this many optimizer steps (and at each epoch's end): live to TensorBoard, and the step curve of report.html.")
    early_stopping_patience: Optional[int] = Field(2, ge=1, description="Stop after this many epochs without improvement (null = off).")
    metric: Literal["macro_f1", "micro_f1", "accuracy", "loss"] = Field("macro_f1", description="Validation metric for best checkpoint and early stopping.")
    threshold: float = Field(0.5, gt=0, lt=1, description="multilabel: sigmoid threshold.")
    tune_thresholds: bool = Field(False, description="multilabel: per-class thresholds that maximise F1 on held-out predictions (out-of-fold; validation with 1 fold), saved with the models.")
    num_workers: int = Field(1, ge=1, description="Ray Train workers per fold (data parallel).")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved by each training worker.")
    use_gpu: Literal["auto", "yes", "no"] = Field("auto", description="auto: use a GPU when the cluster has one.")
    torch_threads: Optional[int] = Field(None, ge=1, description="torch intra-op threads in a worker (default: its CPUs).")

    @model_validator(mode="after")
    def _adafactor_schedule_needs_adafactor(self) -> "TrainConfig":
        if self.schedule == "adafactor" and self.optimizer != "adafactor":
            raise ValueError(f"train.schedule: adafactor is Adafactor's own lr; set train.optimizer: adafactor (got {self.optimizer!r})")
        return self
