"""The `sortflow` command. Each subcommand resolves parameters, calls one step function and prints its result."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import yaml

from components.core.config import Params, load_params, refuse_published_keys, valid_keys
from components.core.errors import InputError, ServiceError, SortflowError
from components.core.results import StepResult, format_table


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", metavar="PATH", help="parameter file (default: ./params.yaml if present)")
    common.add_argument(
        "-o",
        "--override",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one parameter, e.g. -o split.seed=7 (repeatable)",
    )
    return common


# What `sortflow` exits with, for scripts and schedulers (the reference's exit-code page is written from this).
EXIT_CODES = {
    0: "done: the command did what it was asked",
    1: "done, and what it checked failed: check-dataset found errors in the data, `serve --status` found no "
    "server, a crashed one or an unhealthy model, predict could not classify some inputs, bench-serve saw "
    "failed requests",
    2: "error, reported in one line: a wrong command line, parameter, file or dataset (the message names the "
    "file, the line and the fix), or a service that did not answer (the message names it; running again may "
    "help)",
    3: "monitor: the captured traffic drifted from the served version's reference",
    130: "interrupted (Ctrl-C)",
}
ERROR_EXIT = 2
# The commands whose step returns a result (components/core/results.py): each takes --json.
RESULT_COMMANDS = (
    "check-dataset",
    "split",
    "dataset convert",
    "dataset demo",
    "dataset add-reviewed",
    "dataset audit",
    "train",
    "evaluate",
    "export",
    "register",
    "publish",
    "promote",
    "rollback",
    "history",
    "shadow",
    "monitor",
    "review",
)
INTERRUPTED_EXIT = 130


def _params(args: argparse.Namespace) -> Params:
    overrides = list(args.override)
    if getattr(args, "dir", None):
        overrides.append(f"dataset.dir={args.dir}")
    return load_params(args.params, overrides)


def _check(params: Params, args: argparse.Namespace) -> int:
    from components.steps.check_dataset import check_step

    return _show(check_step(params), args)


def _checked(params: Params) -> None:
    """Check `dataset.dir` first when its check result is missing or older than its lists: the steps' gate only
    reads that result, so that a change to the checks or their report never reruns training in DVC."""
    from components.steps.check_dataset import check_if_needed

    check_if_needed(params)


def cmd_check_dataset(args: argparse.Namespace) -> int:
    return _check(_params(args), args)


def cmd_split(args: argparse.Namespace) -> int:
    from components.steps.split import split_step

    params = _params(args)
    if not params.split.output:
        # PaddleX style: no split dataset, so `split` means check-dataset with its in-place split switched on.
        params.split.enable = True
        return _check(params, args)
    _checked(params)
    return _show(split_step(params), args)


def cmd_convert(args: argparse.Namespace) -> int:
    from components.steps.convert import convert_step

    return _show(convert_step(_params(args), args.src, args.dst), args)


def cmd_demo(args: argparse.Namespace) -> int:
    from components.steps.demo_data import demo_step

    return _show(demo_step(args.dst, force=args.force), args)


def cmd_add_reviewed(args: argparse.Namespace) -> int:
    from components.steps.add_reviewed import add_reviewed

    return _show(add_reviewed(_params(args), args.file), args)


def cmd_audit(args: argparse.Namespace) -> int:
    from components.steps.audit import audit

    return _show(audit(_params(args)), args)


def cmd_monitor(args: argparse.Namespace) -> int:
    from components.steps.monitor import monitor

    return _show(monitor(_params(args)), args)


def cmd_review(args: argparse.Namespace) -> int:
    from components.steps.review import review

    return _show(review(_params(args)), args)


def cmd_train(args: argparse.Namespace) -> int:
    from components.steps.train import run_training

    params = _params(args)
    _checked(params)
    result = run_training(params, args.argv)
    if result is None or int(os.environ.get("RANK", 0)) != 0:  # torchrun's ranks ran it, or another rank
        return 0
    return _show(result, args)


def _show(result: StepResult, args: argparse.Namespace) -> int:
    """A step's result on the terminal, or as JSON with --json; the command's exit code."""
    print(json.dumps(result.to_json(), indent=2) if getattr(args, "json", False) else result.text())
    return result.exit_code


def cmd_evaluate(args: argparse.Namespace) -> int:
    from components.steps.evaluate import evaluate

    return _show(evaluate(_params(args)), args)


def cmd_export(args: argparse.Namespace) -> int:
    from components.steps.export import export

    return _show(export(_params(args)), args)


def cmd_register(args: argparse.Namespace) -> int:
    from components.steps.register import register

    return _show(register(_params(args)), args)


def cmd_publish(args: argparse.Namespace) -> int:
    from components.steps.publish import publish

    return _show(publish(_params(args)), args)


def cmd_promote(args: argparse.Namespace) -> int:
    from components.steps import promote
    from components.steps.publish import publish

    params = _params(args)
    if args.command == "promote":
        move = promote.promote(params, args.version, args.reason, args.by)
    else:
        move = promote.rollback(params, args.reason, args.by)
    _show(move, args)
    return _show(publish(params), args)


def cmd_shadow(args: argparse.Namespace) -> int:
    from components.steps.shadow import shadow

    if (args.version is None) == (not args.stop):
        raise InputError("give a registry VERSION to shadow the champion with, or --stop (not both)")
    return _show(shadow(_params(args), None if args.stop else args.version), args)


def cmd_history(args: argparse.Namespace) -> int:
    from components.steps.promote import history

    return _show(history(_params(args)), args)


def _serve_status(params: Params) -> int:
    from components.steps.serve import inspect

    report = inspect(params)
    if report["status"] == "stopped":
        print("No Triton server is running")
        return 1
    if report["status"] == "crashed":
        print(f"The Triton server (pid {report['pid']}) has crashed; the end of {report['log']}:")
        print(report["log_tail"])
        print("Start it again with `sortflow serve`")
        return 1
    print(json.dumps(report, indent=2))
    if report["status"] == "unhealthy":
        sick = [model for model, health in report["health"].items() if health != "healthy"]
        print(f"unhealthy: {', '.join(sick)}; load them again with `sortflow serve --reload`", file=sys.stderr)
        return 1
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from components.steps import serve

    refuse_published_keys(args.override, "serve")
    params = _params(args)
    if args.stop:
        print("Stopped the Triton server" if serve.stop(params) else "No Triton server was running")
        return 0
    if args.status:
        return _serve_status(params)
    if args.reload:
        state = serve.reload(params)
        print(f"Loaded {', '.join(state.models)} again")
        return 0
    if args.foreground:
        return serve.run_foreground(params)
    state = serve.start(params)
    print(
        f"Triton is serving {', '.join(state.models)} on {state.host}: gRPC {state.grpc_port}, "
        f"HTTP {state.http_port}, metrics {state.metrics_port} (pid {state.pid}, log {state.log})"
    )
    print("Stop it with: sortflow serve --stop")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from components.steps.predict import command_config, create_pipeline

    config = command_config(_params(args), args.config, args.model, args.topk, args.triton)
    failed = 0
    for result in create_pipeline(config).predict(args.input):
        if not result.ok:
            failed += 1
            print(f"error: {result['input_path']}: {result['error']}", file=sys.stderr)
            continue
        result.print()
        if args.save_path:
            result.save_to_json(args.save_path)
            result.save_to_img(args.save_path)
    return 1 if failed else 0


def cmd_bench_serve(args: argparse.Namespace) -> int:
    from components.steps.bench_serve import BenchConfig, as_records, bench_serve, format_table
    from components.steps.serve import client_host

    params = _params(args)
    config = BenchConfig(
        url=args.url or f"{client_host(params.serve.host)}:{params.serve.grpc_port}",
        model=args.model or params.register.model_name,
        inputs=("pixels", "bytes") if args.input == "both" else (args.input,),
        concurrency=tuple(args.concurrency),
        requests=args.requests,
        max_seconds=args.max_seconds,
        images=tuple(args.images or [params.dataset.dir]),
        shared_memory=args.shared_memory,
    )
    results = bench_serve(config)
    print(f"Triton at {config.url}, model {config.model}, one image per request")
    print(format_table(results))
    if args.json:
        from pathlib import Path

        from components.core.fsutil import atomic_write_json

        atomic_write_json(Path(args.json), {"url": config.url, "model": config.model, "levels": as_records(results)})
    return 1 if any(r.errors for r in results) else 0


def _concurrency(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",")]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers separated by commas, e.g. 1,4,8")
    return levels


def cmd_get_pipeline_config(args: argparse.Namespace) -> int:
    from pathlib import Path

    from components.steps.predict import params_config

    path = params_config(_params(args)).save(Path(args.save_path) / "pipeline.yaml")
    print(f"Wrote {path}; use it with `sortflow predict --config {path}` or create_pipeline({str(path)!r})")
    return 0


def _flow_overrides(args: argparse.Namespace) -> tuple[Params, dict[str, str]]:
    """The parameters, checked here (before Prefect starts), and `-o` as the flows' `overrides` parameter."""
    return _params(args), dict(item.partition("=")[::2] for item in args.override)


def _prefect_api() -> str | None:
    """The Prefect server this process talks to, after checking that it answers; None: a temporary local one."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        return None
    import httpx

    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        raise ServiceError(
            f"the Prefect server at PREFECT_API_URL={url} cannot be reached ({exc}); start it "
            "(`prefect server start`), point PREFECT_API_URL at a running one, or unset it to run on a "
            "temporary local server"
        ) from exc
    return url


def cmd_run(args: argparse.Namespace) -> int:
    _, overrides = _flow_overrides(args)
    _prefect_api()
    from flows.pipeline import FLOWS

    extra = {"force": True} if args.force else {}
    if extra and args.flow != "training-pipeline":
        raise InputError("--force applies to the training-pipeline flow only")
    with _prefect_server_errors():
        result = FLOWS[args.flow](overrides=overrides, params_file=args.params, **extra)
    print(result if isinstance(result, str) else json.dumps(result, indent=2, default=str))
    return 0


@contextlib.contextmanager
def _prefect_server_errors() -> Iterator[None]:
    """Prefect's temporary server that did not start in time, as one line that says what to do."""
    try:
        yield
    except RuntimeError as exc:
        if "Timed out while attempting to connect to ephemeral Prefect API server" not in str(exc):
            raise
        waited = os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "20")
        raise ServiceError(
            f"Prefect's temporary server did not start within {waited} s: raise "
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or start a server (`prefect server start`) and set "
            "PREFECT_API_URL (e.g. http://127.0.0.1:4200/api)"
        ) from None


def cmd_deploy(args: argparse.Namespace) -> int:
    if args.image and not args.work_pool:
        raise InputError("--image names what a work pool runs: add --work-pool NAME (a docker or kubernetes pool)")
    params, overrides = _flow_overrides(args)
    if _prefect_api() is None:
        raise InputError(
            "sortflow deploy registers deployments with a Prefect server: start one (`prefect server start`) "
            "and set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api), or log in to Prefect Cloud"
        )
    from flows import deploy

    if not args.work_pool:
        deploy.serve_deployments(params, args.params, overrides)
        return 0
    names = deploy.deploy_to_work_pool(params, args.params, overrides, args.work_pool, args.image)
    print(f"Deployed to work pool {args.work_pool!r}: {', '.join(names)}")
    print(f"Start a worker where the runs should execute: prefect worker start --pool {args.work_pool}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from components.steps.summary import pipeline_summary, summary_markdown

    print(summary_markdown(pipeline_summary(_params(args))), end="")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from components.model.zoo import model_table

    rows = model_table()
    for row in rows:
        row["offline_weights"] = "yes" if row["offline_weights"] else "no"
    print(format_table(["name", "timm_name", "params_m", "imagenet_top1", "input_size", "offline_weights"], rows))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from components.integrations.mlflow_tracking import compare_runs

    columns, rows = compare_runs(_params(args).mlflow, limit=args.limit)
    if not rows:
        print("No runs yet: train a model first (sortflow train)")
        return 0
    print(format_table(columns, rows))
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    if args.keys:
        print("\n".join(valid_keys()))
    else:
        print(yaml.safe_dump(_params(args).to_dict(), sort_keys=False), end="")
    return 0


def _dataset_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("check-dataset", parents=[common], help="check a ClsDataset (PaddleX check_dataset)")
    p.add_argument("dir", nargs="?", help="dataset folder (sets dataset.dir)")
    p.set_defaults(func=cmd_check_dataset)

    p = sub.add_parser(
        "split", parents=[common], help="resplit train/val reproducibly (into split.output, or in place and check)"
    )
    p.add_argument("dir", nargs="?", help="dataset folder (sets dataset.dir)")
    p.set_defaults(func=cmd_split)

    dataset = sub.add_parser("dataset", help="convert or create datasets").add_subparsers(
        dest="dataset_command", required=True, metavar="ACTION"
    )
    p = dataset.add_parser("convert", parents=[common], help="one folder per class -> ClsDataset, split")
    p.add_argument("src", help="folder with one sub-folder of images per class")
    p.add_argument("dst", help="new ClsDataset folder")
    p.set_defaults(func=cmd_convert)
    p = dataset.add_parser(
        "add-reviewed", parents=[common], help="labelled images from a review (CSV or Label Studio JSON) -> dataset"
    )
    p.add_argument("file", help="review.csv with its label column filled in, or a Label Studio JSON export")
    p.set_defaults(func=cmd_add_reviewed)
    dataset.add_parser(
        "audit", parents=[common], help="near-duplicates across splits and labels, likely label errors (a sheet)"
    ).set_defaults(func=cmd_audit)
    p = dataset.add_parser("demo", help="write the bundled demo dataset (handwritten digits)")
    p.add_argument("dst", help="folder to create, e.g. data/")
    p.add_argument("--force", action="store_true", help="replace an existing folder")
    p.set_defaults(func=cmd_demo)


def _who_and_why(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reason", default="", help="why, recorded in the registry")
    p.add_argument("--by", default="", help="who, recorded in the registry (default: user@host)")
    p.set_defaults(func=cmd_promote)


def _release_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    for name, func, text in (
        ("train", cmd_train, "train a model on a checked dataset (MLflow tracked)"),
        ("evaluate", cmd_evaluate, "top-1/top-5, per-class metrics, confusion matrix"),
        ("export", cmd_export, "checkpoint -> ONNX (raw RGB in, probabilities out), parity-checked"),
        ("register", cmd_register, "ONNX model -> MLflow registry (champion/challenger)"),
        ("publish", cmd_publish, "registry champion -> Triton model repository"),
    ):
        sub.add_parser(name, parents=[common], help=text).set_defaults(func=func)
    p = sub.add_parser("promote", parents=[common], help="make a registry version champion, then publish and reload")
    p.add_argument("version", type=int, help="registry version number (sortflow history lists them)")
    _who_and_why(p)
    p = sub.add_parser("rollback", parents=[common], help="back to the previous champion, then publish and reload")
    _who_and_why(p)
    sub.add_parser("history", parents=[common], help="which version was champion when, by whom and why").set_defaults(
        func=cmd_history
    )
    p = sub.add_parser(
        "shadow", parents=[common], help="run a registry version beside the champion on live traffic, answering nothing"
    )
    p.add_argument("version", type=int, nargs="?", help="registry version to shadow the champion with")
    p.add_argument("--stop", action="store_true", help="end the shadow run")
    p.set_defaults(func=cmd_shadow)


def _serving_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("serve", parents=[common], help="start a local Triton server over publish.repo")
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--status",
        action="store_true",
        help="the running server and the health of each model (exit 1: stopped, crashed or unhealthy)",
    )
    group.add_argument("--stop", action="store_true", help="stop the running server")
    group.add_argument("--reload", action="store_true", help="load every model again (after a backend died)")
    group.add_argument(
        "--foreground", action="store_true", help="serve as a child of this process; SIGTERM drains and exits 0"
    )
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("predict", parents=[common], help="classify images (in-process ONNX, or Triton over gRPC)")
    p.add_argument("--input", required=True, nargs="+", help="image files, folders or http(s) URLs")
    p.add_argument("--topk", type=int, default=0, help="classes per image (default 5)")
    p.add_argument("--save-path", help="write <name>_res.json and <name>_res.png here")
    p.add_argument("--triton", metavar="HOST:PORT", help="Triton gRPC endpoint instead of in-process onnxruntime")
    p.add_argument("--model", help="export folder, models:/<name>@<alias>, or imagenet (default: output/export)")
    p.add_argument("--config", help="pipeline.yaml from get-pipeline-config")
    p.set_defaults(func=cmd_predict)
    for name, func, text in (
        ("monitor", cmd_monitor, "captured traffic vs the served version's reference: drift exits with 3"),
        ("review", cmd_review, "a labelling queue from captured traffic: CSV, contact sheet, Label Studio tasks"),
    ):
        sub.add_parser(name, parents=[common], help=text).set_defaults(func=func)
    p = sub.add_parser(
        "bench-serve", parents=[common], help="requests/s and p50/p95/p99 latency of a running server's endpoints"
    )
    p.add_argument("--url", help="Triton gRPC HOST:PORT (default: serve.host and serve.grpc_port)")
    p.add_argument(
        "--model", help="classifier name; <model>_bytes is its encoded-image endpoint (default: register.model_name)"
    )
    p.add_argument("--input", choices=["pixels", "bytes", "both"], default="both", help="which endpoint (default both)")
    p.add_argument("--concurrency", type=_concurrency, default=[1, 4, 8], help="levels, e.g. 1,4,8 (default)")
    p.add_argument("--requests", type=int, default=500, help="measured requests per level (default 500)")
    p.add_argument("--max-seconds", type=float, default=60, help="a level stops after this long (default 60)")
    p.add_argument("--images", nargs="+", help="image files or folders to send (default: dataset.dir)")
    p.add_argument(
        "--shared-memory",
        choices=["none", "system"],
        default="none",
        help="system: send pixels through shared memory, as perf_analyzer does (server on this machine only)",
    )
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.set_defaults(func=cmd_bench_serve)
    p = sub.add_parser(
        "get-pipeline-config", parents=[common], help="write pipeline.yaml for predict / create_pipeline"
    )
    p.add_argument("--save-path", default=".", help="folder for pipeline.yaml")
    p.set_defaults(func=cmd_get_pipeline_config)


def _tool_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("models", help="the model zoo: PaddleX names, timm names, sizes, ImageNet top-1")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("compare", parents=[common], help="recent training runs side by side")
    p.add_argument("--limit", type=int, default=10, help="how many recent runs (default 10)")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("run", parents=[common], help="run a Prefect flow once, locally")
    p.add_argument(
        "flow",
        nargs="?",
        default="training-pipeline",
        choices=["training-pipeline", "data-check", "promote-and-serve", "monitor"],
        help="flow to run (default training-pipeline)",
    )
    p.add_argument("--force", action="store_true", help="training-pipeline: train even when the data is unchanged")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser(
        "deploy", parents=[common], help="register the scheduled Prefect deployments: run them here, or by a work pool"
    )
    p.add_argument("--work-pool", metavar="NAME", help="deploy to this work pool, whose workers run the flows")
    p.add_argument("--image", help="with --work-pool: the image a docker or kubernetes pool runs (not built here)")
    p.set_defaults(func=cmd_deploy)
    p = sub.add_parser("summary", parents=[common], help="what the last pipeline run produced, from its reports")
    p.set_defaults(func=cmd_summary)
    p = sub.add_parser("params", parents=[common], help="print the resolved parameters")
    p.add_argument("--keys", action="store_true", help="list every section.key name instead")
    p.set_defaults(func=cmd_params)


def build_parser() -> argparse.ArgumentParser:
    """The `sortflow` command and its subcommands, each bound to its cmd_ function."""
    common = _common()
    parser = argparse.ArgumentParser(
        prog="sortflow", description="Image classification pipeline: dataset checks to Triton serving."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _dataset_commands(sub, common)
    _release_commands(sub, common)
    _serving_commands(sub, common)
    _tool_commands(sub, common)
    dataset = sub.choices["dataset"]._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name in RESULT_COMMANDS:
        command = dataset[name.split()[1]] if name.startswith("dataset ") else sub.choices[name]
        command.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    # Our own steps log at INFO; libraries (GX, matplotlib, ...) only when something is wrong.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("components").setLevel(logging.INFO)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect waits 20 s for its temporary server (no PREFECT_API_URL); on a busy 2-core machine it has taken
    # 21 s to start, and `sortflow run` then failed with "Timed out while attempting to connect".
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    # The steps' own log lines also go to the Prefect run logs (UI and API), not only to this terminal.
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "components")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")  # outside a run: terminal only
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except SortflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ERROR_EXIT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT


if __name__ == "__main__":
    sys.exit(main())
