"""Command line: run | test | predict | serve | export | report | info | check.

Bad input (config, data, run directory) prints one line naming the file, key or row and exits 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from rich.console import Console

from orchestrator.rundir import RunDir, RunDirError
from orchestrator.serve.client import ClientError
from orchestrator.config import ConfigError, load_config
from orchestrator.data import DataError
from orchestrator.train.errors import TrainingError

USER_ERRORS = (ConfigError, DataError, RunDirError, ClientError, TrainingError)
console = Console(stderr=False, highlight=False)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orchestrator", description="Ray-distributed text-classification experiments.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run an experiment YAML on Ray")
    run.add_argument("config", help="experiment YAML file")
    run.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue an existing run directory (same config)")
    mode.add_argument("--overwrite", action="store_true", help="delete an existing run directory and start over")
    run.add_argument("--resume-from", metavar="RUN", help="incremental training: start each fold from RUN's last training state (model, optimizer, scheduler, RNG)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. train.epochs=1 (YAML value)")
    output = run.add_mutually_exclusive_group()
    output.add_argument("--verbose", action="store_true", help="show the engine's output (Ray, Tune, Train, libraries) live instead of logging it to <run>/logs/")
    output.add_argument("--quiet", action="store_true", help="print only the final summary")

    test = sub.add_parser("test", help="evaluate a run on its test split or a file")
    test.add_argument("run", help="run directory")
    test.add_argument("--file", help="labelled data file (same columns as the experiment) instead of the saved test split")
    test.add_argument("--out", help="report folder (default: <run>/test)")

    predict = sub.add_parser("predict", help="predict labels: interactive lines, or a file in batch")
    predict.add_argument("run", nargs="?", help="run directory (or --url)")
    predict.add_argument("--file", help="text file, one text per line (default: read lines interactively from stdin)")
    predict.add_argument("--top", type=int, default=3, help="top probabilities to show")
    predict.add_argument("--model", default="ensemble", help="which model of the run: ensemble (default), fold:<k>, student, pruned or onnx")
    predict.add_argument("--url", help="send the texts to a running service (orchestrator serve) instead of loading a run")
    predict.add_argument("--token", help="bearer token of the service at --url")

    serve = sub.add_parser("serve", help="serve a run's fold ensemble (or another of its models) over HTTP on Ray Serve, until Ctrl-C")
    serve.add_argument("run", help="run directory")
    serve.add_argument("--host", help="bind address (default: the run's serve.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="HTTP port (default: the run's serve.port)")
    serve.add_argument("--token", help="bearer token required by /predict and /info (default: $ORCHESTRATOR_SERVE_TOKEN, "
                                        "else the run's serve.token_file)")
    serve.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without a token")
    serve.add_argument("--model", help="which model of the run: ensemble (default), fold:<k>, student, pruned or onnx")
    serve.add_argument("--onnx", action="store_true", help="run the ONNX exports (export/fold_<k>/) instead of the torch models (--model onnx)")
    serve.add_argument("--replicas", type=int, help="deployment replicas (default: the run's serve.replicas)")
    serve.add_argument("--ingress", choices=["proxy", "haproxy"], help="Ray Serve's Python proxy, or haproxy: Serve's "
                       "high-throughput mode, for a Ray this command starts (default: the run's serve.ingress)")
    serve.add_argument("--write-config", metavar="FILE", help="write a Ray Serve config file for `serve run FILE` / `serve deploy FILE` "
                                                              "instead of serving (the token is not written into it)")

    export = sub.add_parser("export", help="write one model of a run in another format (hf: a folder transformers loads)")
    export.add_argument("run", help="run directory")
    export.add_argument("--model", default="fold:0", help="fold:<k> (default fold:0), student or pruned")
    export.add_argument("--format", choices=["hf"], default="hf", help="hf: config.json, model.safetensors, tokenizer, model card")
    export.add_argument("--out", required=True, help="folder to write")

    report = sub.add_parser("report", help="compare every model of a run and write <run>/report.html")
    report.add_argument("run", help="run directory")

    info = sub.add_parser("info", help="print the resolved config and model size")
    info.add_argument("config", help="experiment YAML file")

    check = sub.add_parser("check", help="validate an experiment (data, config, search space, model names) without running it")
    check.add_argument("config", help="experiment YAML file")
    check.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (as for run)")
    return parser


def _overrides(pairs: Sequence[str]) -> dict:
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE")
        out[key.strip()] = yaml.safe_load(value)
    return out


def cmd_run(args) -> int:
    """The experiment with its live view; the engine's output goes to <run>/logs/driver.log unless
    --verbose. An error raised once that log exists names it."""
    import ray

    from orchestrator.engine_output import EngineOutput
    from orchestrator.pipeline import run_experiment
    from orchestrator.report.live import RunView
    from orchestrator.report.terminal import print_summary

    cfg = load_config(args.config, _overrides(args.set))
    ray_was_up = ray.is_initialized()  # a caller's Ray (tests, a notebook) stays up
    with EngineOutput(enabled=not args.verbose) as engine:
        view_console = Console(file=engine.terminal, highlight=False) if engine.enabled else console
        view = RunView(view_console, "quiet" if args.quiet else "live", engine)
        try:
            run_experiment(cfg, resume=args.resume, overwrite=args.overwrite, address=args.address,
                           resume_from=args.resume_from, on_done=lambda summary: print_summary(summary, view_console), watch=view)
        except Exception as exc:
            if engine.path is not None:
                if isinstance(exc, USER_ERRORS):
                    exc.args = (f"{exc} (engine log: {engine.path})",)
                else:
                    print(f"engine log: {engine.path}", file=engine.terminal)
            raise
        finally:
            if ray.is_initialized() and not ray_was_up:
                ray.shutdown()  # while its last words still go to the log
    return 0


def cmd_test(args) -> int:
    from orchestrator.evaluate.ensemble import Ensemble
    from orchestrator.evaluate.evaluation import evaluate_split
    from orchestrator.evaluate.measure import ensemble_artifact, fold_logits
    from orchestrator.report.test_report import print_report

    run = RunDir.open(args.run)
    ensemble = Ensemble.of_run(run)
    if args.file:
        from orchestrator.data import read_labelled_file

        split, logits = read_labelled_file(run.config().data, args.file, ensemble.classes), None
    else:  # the evaluation split: the run's own measurements of its ensemble's models
        split = run.evaluation_split()
        logits = fold_logits(run, ensemble_artifact(run))
    out = Path(args.out) if args.out else run.test_dir
    metrics = evaluate_split(run, ensemble, split, ensemble.classes, ensemble.multilabel, out_dir=out, logits=logits)
    print_report(metrics, metrics["per_class"], console=console)
    console.print(f"report written to {out}/")
    return 0


def cmd_predict(args) -> int:
    if (args.run is None) == (args.url is None):
        raise RunDirError("predict: give a run directory or --url (one of them)")
    source, predict_lines = _predictor(args)
    if args.file:
        from orchestrator.data import read_lines

        texts = read_lines(args.file, "--file")
        for text, line in zip(texts, predict_lines(texts)):
            print(json.dumps({"text": text, **line}, ensure_ascii=False))
        return 0
    interactive = sys.stdin.isatty()
    if interactive:
        console.print(f"[bold]{source}[/]: type a text and press Enter (Ctrl-D to quit)")
    for raw in sys.stdin:
        text = raw.strip()
        if text:
            line = predict_lines([text])[0]
            top = ", ".join(f"{name} {p:.3f}" for name, p in line["top"])
            print(f"{','.join(line['labels'])}\t{top}", flush=True)
    return 0


def _predictor(args) -> tuple[str, Callable[[list[str]], list[dict]]]:
    """What answers (for the banner) and texts -> output lines: the run's ensemble, or the service at --url."""
    if args.url:
        from orchestrator.serve.client import Client

        client = Client(args.url, args.token)
        return args.url, lambda texts: _remote_lines(client, texts, args.top)
    from orchestrator.evaluate.loading import load_model

    run = RunDir.open(args.run)
    model = load_model(run, args.model)
    return f"{run.root} ({args.model})", lambda texts: _predict_lines(model, texts, args.top)


def _remote_lines(client, texts: list[str], top: int) -> list[dict]:
    """The lines of ``_predict_lines`` from the service's top-``top`` probabilities."""
    return [{"labels": p["labels"], "top": [(name, round(prob, 4)) for name, prob in p["probabilities"].items()]}
            for p in client.predict_many(texts, top_k=top)]


def _predict_lines(ensemble, texts: list[str], top: int) -> list[dict]:
    pred = ensemble.predict(texts)
    out = []
    for labels, probs in zip(pred.labels, pred.probs):
        order = probs.argsort()[::-1][:top]
        out.append({"labels": labels, "top": [(ensemble.classes[j], round(float(probs[j]), 4)) for j in order]})
    return out


def cmd_serve(args) -> int:
    from orchestrator.config import with_overrides
    from orchestrator.extras import require

    run = RunDir.open(args.run)
    require("serve", "orchestrator serve")
    from orchestrator.serve.deployment import serve_until_interrupted
    from orchestrator.train.cluster import init_ray

    flags = {f"serve.{k}": getattr(args, k) for k in ("host", "port", "replicas", "ingress") if getattr(args, k) is not None}
    if args.insecure:
        flags["serve.insecure"] = True
    cfg = with_overrides(run.config(), flags).serve.with_token(args.token)  # validated like the YAML (port range, replicas >= 1)
    cfg.check_exposure()
    if args.write_config:
        import yaml

        from orchestrator.serve.deployment import serve_config
        from trainables.atomic import atomic_write_text

        target = Path(args.write_config)
        if not target.parent.is_dir():
            raise ConfigError(f"--write-config {target}: no such folder {target.parent}")
        atomic_write_text(target, yaml.safe_dump(serve_config(run, cfg, args.model, args.onnx), sort_keys=False))
        from orchestrator.config import TOKEN_ENV

        console.print(f"wrote {args.write_config}: `serve run {args.write_config}` or `serve deploy {args.write_config}` "
                      f"(the token, if any: ${TOKEN_ENV} or the run's serve.token_file where Serve builds the app)")
        if cfg.ingress == "haproxy":
            from orchestrator.train.cluster import HAPROXY_SETTINGS

            console.print(f"serve.ingress haproxy is not part of a Serve config: start Ray (or `serve run`) with {HAPROXY_SETTINGS}")
        return 0
    init_ray(ingress=cfg.ingress)
    serve_until_interrupted(run, cfg, onnx=args.onnx, log=console.print, model=args.model)
    return 0


def cmd_export(args) -> int:
    from orchestrator.stages.export import export_hf_model

    result = export_hf_model(RunDir.open(args.run), args.model, Path(args.out))
    console.print(f"wrote {result['folder']}: transformers' probabilities within {result['max_abs_diff']:.1e} of the model's "
                  f"on {result['texts']} evaluation texts (same labels: {result['same_labels']})")
    return 0


def cmd_report(args) -> int:
    from orchestrator.report.compare import stage_comparison
    from orchestrator.report.html import write_html_report
    from orchestrator.report.terminal import print_stage_table

    run = RunDir.open(args.run)
    rows = stage_comparison(run, log=console.print)
    print_stage_table(rows, console)
    console.print(f"report: {write_html_report(run, rows)}")
    return 0


def cmd_check(args) -> int:
    from orchestrator.validate import validate

    cfg = load_config(args.config, _overrides(args.set))
    from orchestrator.stream.source import TEST_FOLD, streaming

    if streaming(cfg):  # read and checked on Ray Data, as `run` would
        from orchestrator.stream.run import checked_pool

        pool = checked_pool(cfg)
        console.print(f"{args.config}: ok ({len(pool.classes)} classes; pool {pool.pool_rows()}, test {pool.rows(TEST_FOLD)} rows; streamed)")
        return 0
    dataset = validate(cfg)
    sizes = ", ".join(f"{name} {len(split.texts)}" for name in ("train", "val", "test") if (split := getattr(dataset, name)))
    console.print(f"{args.config}: ok ({len(dataset.classes)} classes; {sizes} rows)")
    return 0


def cmd_info(args) -> int:
    from orchestrator.modelinfo import model_info

    cfg = load_config(args.config)
    console.print_json(json.dumps(cfg.model_dump(mode="json")))
    info = model_info(cfg)
    console.print(f"model: {info['description']}  parameters: {info['parameters']:,}  size: {info['size_mb']:.1f} MB (fp32)")
    return 0


COMMANDS = {"run": cmd_run, "test": cmd_test, "predict": cmd_predict, "serve": cmd_serve, "report": cmd_report, "info": cmd_info,
            "check": cmd_check, "export": cmd_export}


def one_line(text: str) -> str:
    """``text`` with line breaks and other unprintable characters escaped (a key or value from the
    input may hold them), so an error is always one line."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except USER_ERRORS as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
