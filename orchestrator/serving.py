"""Ray Serve's import path for a run's application:

    serve run orchestrator.serving:build_app run_dir=runs/example2 [onnx=true]

or the ``import_path`` of the Serve config that ``orchestrator serve RUN --write-config FILE`` writes
(``serve run FILE`` / ``serve deploy FILE``). The builder lives in orchestrator/serve/deployment.py.
"""
from orchestrator.serve.deployment import build_app

__all__ = ["build_app"]
