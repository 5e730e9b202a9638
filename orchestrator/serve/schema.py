"""The HTTP API's bodies as pydantic models: what a request may hold (checked here, with the service's
own status codes and one-line messages) and what a response holds (documented in /openapi.json).

Two request shapes: the service's own ``POST /predict`` (``{"text"}`` or ``{"texts"}``, ``top_k``) and
the Hugging Face Inference API's text classification on ``POST /hf`` (``{"inputs": str | [str]}``,
``parameters.top_k``), answered in its shape ``[[{"label", "score"}, ...], ...]``.
Codes: 400 malformed JSON, 413 too many texts (or too large a body), 422 anything else.
"""
from __future__ import annotations

import json
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, field_validator, model_validator

MAX_TEXTS = 256                  # per request; more is a 413
MAX_BODY_BYTES = 1 << 20         # per request; more is a 413


class RequestError(Exception):
    """A request the service refuses: an HTTP status and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _non_empty(texts: list[str], name: str) -> list[str]:
    for i, text in enumerate(texts):
        if not text.strip():
            raise ValueError(f"{name if len(texts) == 1 and name == 'text' else f'{name}[{i}]'} must be a non-empty string")
    return texts


class PredictRequest(BaseModel):
    """``POST /predict``: one of ``text`` or ``texts`` (at most 256), and ``top_k`` classes per answer."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"text": "a moving film"}, {"texts": ["a", "b"], "top_k": 2}]})
    text: Optional[StrictStr] = Field(None, description="One text.")
    texts: Optional[list[StrictStr]] = Field(None, min_length=1, max_length=MAX_TEXTS, description="Several texts.")
    top_k: Optional[StrictInt] = Field(None, ge=1, description="Classes in each answer's probabilities (default: all).")

    @model_validator(mode="after")
    def _one_of(self) -> "PredictRequest":
        if (self.text is None) == (self.texts is None):
            raise ValueError('give exactly one of "text" or "texts"')
        _non_empty(self.all_texts, "text" if self.text is not None else "texts")
        return self

    @property
    def all_texts(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts)


class Prediction(BaseModel):
    labels: list[str] = Field(description="Predicted classes: the most probable (single-label), or every class over its threshold.")
    probabilities: dict[str, float] = Field(description="The top_k classes (default all), most probable first.")
    truncated: bool = Field(description="The text was longer than the model's max_length.")


class PredictResponse(BaseModel):
    predictions: list[Prediction]
    model: str = Field(description="<run name>@<config hash> of the model that answered.")


class HFParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    top_k: Optional[StrictInt] = Field(None, ge=1, description="Labels per input (default: all).")
    function_to_apply: Optional[StrictStr] = Field(None, description="Accepted for compatibility; scores are always the "
                                                                     "model's own (softmax, or per-class sigmoid for multi-label).")


class HFRequest(BaseModel):
    """``POST /hf``: the Hugging Face Inference API's text-classification request. ``options``
    (wait_for_model, use_cache: about the hosted API) are accepted and ignored."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"inputs": "a moving film"}]})
    inputs: Union[StrictStr, list[StrictStr]] = Field(description="A text or a list of texts (at most 256).")
    parameters: HFParameters = Field(default_factory=HFParameters)
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("inputs")
    @classmethod
    def _texts(cls, value):
        texts = [value] if isinstance(value, str) else value
        if not texts:
            raise ValueError("inputs must be a text or a non-empty list of texts")
        _non_empty(texts, "inputs")
        return value

    @property
    def all_texts(self) -> list[str]:
        return [self.inputs] if isinstance(self.inputs, str) else list(self.inputs)


class HFLabel(BaseModel):
    label: str
    score: float


HFResponse = list[list[HFLabel]]


def _json(body: bytes) -> Any:
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:  # ValueError covers bad JSON and non-UTF-8 bytes
        raise RequestError(400, f"malformed JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise RequestError(422, "body must be a JSON object")
    return payload


def _validated(model: type[BaseModel], payload: dict, count: int) -> BaseModel:
    if count > MAX_TEXTS:
        raise RequestError(413, f"{count} texts; at most {MAX_TEXTS} per request")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        error = exc.errors()[0]
        # a key is the client's text: quoted as JSON where it is not a plain name, so no line break gets through
        where = ".".join(str(p) if str(p).isidentifier() or isinstance(p, int) else json.dumps(str(p)) for p in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        raise RequestError(422, f"{where}: {message}" if where else message) from None


def parse_predict(body: bytes) -> tuple[list[str], Optional[int]]:
    """(texts, top_k) of a /predict body."""
    payload = _json(body)
    texts = payload.get("texts")
    request = _validated(PredictRequest, payload, len(texts) if isinstance(texts, list) else 1)
    return request.all_texts, request.top_k


def parse_hf(body: bytes) -> tuple[list[str], Optional[int]]:
    """(texts, top_k) of a /hf body."""
    payload = _json(body)
    inputs = payload.get("inputs")
    request = _validated(HFRequest, payload, len(inputs) if isinstance(inputs, list) else 1)
    return request.all_texts, request.parameters.top_k


def hf_answer(prediction: dict) -> list[dict]:
    """One /predict prediction as the Inference API's list of {label, score}, most probable first."""
    return [{"label": label, "score": score} for label, score in prediction["probabilities"].items()]
