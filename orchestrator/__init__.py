"""Ray-distributed experiment orchestrator for text classification.

``orchestrator.run(config, **overrides)`` runs an experiment; ``orchestrator.load(run_dir, model)``
returns a predictor for one of its models (orchestrator/api.py). The CLI is ``python -m orchestrator``.
"""
from orchestrator.api import Predictor, load, run

__all__ = ["Predictor", "load", "run"]
