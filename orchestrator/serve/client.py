"""A small HTTP client of the serving API (``orchestrator.serve.deployment``); used by ``predict --url``."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import requests


class ClientError(RuntimeError):
    """The service refused a request (``status``: its HTTP status) or could not be reached (``status`` None)."""

    def __init__(self, status: Optional[int], message: str):
        super().__init__(f"HTTP {status}: {message}" if status is not None else message)
        self.status = status
        self.message = message


class Client:
    """``Client(url, token).predict(["text", ...])``; every call returns the response JSON or raises ClientError."""

    def __init__(self, url: str, token: Optional[str] = None, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def predict(self, texts: str | Sequence[str], top_k: Optional[int] = None) -> dict:
        """``{"predictions": [...], "model": ...}`` for one text (a str) or a list of texts."""
        body: dict[str, Any] = {"text": texts} if isinstance(texts, str) else {"texts": list(texts)}
        if top_k is not None:
            body["top_k"] = top_k
        return self._call("POST", "/predict", json=body)

    def predict_many(self, texts: Sequence[str], top_k: Optional[int] = None, chunk: int = 64) -> list[dict]:
        """Predictions for any number of texts, ``chunk`` per request (the service caps texts per request)."""
        return [p for start in range(0, len(texts), chunk)
                for p in self.predict(texts[start : start + chunk], top_k)["predictions"]]

    def info(self) -> dict:
        return self._call("GET", "/info")

    def stats(self) -> dict:
        return self._call("GET", "/stats")

    def health(self) -> dict:
        return self._call("GET", "/healthz")

    def _call(self, method: str, path: str, **kwargs: Any) -> dict:
        try:
            response = self.session.request(method, self.url + path, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise ClientError(None, f"{self.url}{path}: {exc}") from exc
        if response.status_code != 200:
            raise ClientError(response.status_code, _error_message(response))
        return response.json()


def _error_message(response: requests.Response) -> str:
    """The service's ``{"error": ...}``, or the start of whatever else answered (a proxy, another server)."""
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200] or response.reason
