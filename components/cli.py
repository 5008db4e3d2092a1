"""The `sortflow` command. Each subcommand resolves parameters, then calls one component."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import yaml

from components.config import Params, load_params, valid_keys
from components.errors import SortflowError


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


def _params(args: argparse.Namespace) -> Params:
    overrides = list(args.override)
    if getattr(args, "dir", None):
        overrides.append(f"dataset.dir={args.dir}")
    return load_params(args.params, overrides)


def _check(params: Params) -> int:
    from components.check_dataset import check_dataset, format_report
    from components.split import split_dataset

    if params.split.enable:
        split_dataset(params.dataset.dir, params.split)
        print("Split dataset successfully !")
    report = check_dataset(params.dataset)
    print(format_report(report))
    return 0 if report.check_pass else 1


def cmd_check_dataset(args: argparse.Namespace) -> int:
    return _check(_params(args))


def cmd_split(args: argparse.Namespace) -> int:
    params = _params(args)
    params.split.enable = True
    return _check(params)


def cmd_convert(args: argparse.Namespace) -> int:
    from components.convert import convert_folders

    params = _params(args)
    result = convert_folders(args.src, args.dst, params.split, link=params.dataset.link)
    print(f"Converted {args.src} -> {args.dst}: {result.classes} classes, {result.train} train, {result.val} val")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from components.demo_data import build_demo_dataset
    from components.dvc_data import commit_if_unchanged

    result = build_demo_dataset(args.dst, force=args.force)
    commit_if_unchanged(args.dst)
    print(f"Demo dataset in {args.dst}: {result.classes} classes, {result.train} train, {result.val} val")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import subprocess

    from components.train import resolve_device, torchrun_command, train

    params = _params(args)
    _, gpu_ids = resolve_device(params.train.device)
    if len(gpu_ids) > 1 and "WORLD_SIZE" not in os.environ:
        command, env = torchrun_command(gpu_ids, args.argv)
        return subprocess.run(command, env=env).returncode
    result = train(params)
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"Trained {result.epochs} epochs: best val top-1 {result.best_top1:.4f}, last {result.last_top1:.4f}")
        print(f"Checkpoints and reports: {result.output} (MLflow run {result.run_id})")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from components.evaluate import evaluate

    params = _params(args)
    result = evaluate(params)
    print(
        f"val.top1 {result['metrics']['val.top1']:.4f}  val.top5 {result['metrics']['val.top5']:.4f}  "
        f"({result['num_samples']} images, {result['weight_path']})"
    )
    print(f"Report: {params.evaluate.output}/evaluate_result.json")
    return 0


def _print_table(columns: list[str], rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns)
    for row in rows:
        table.add_row(*(str(row[c]) for c in columns))
    Console(width=200).print(table)


def cmd_models(args: argparse.Namespace) -> int:
    from components.models import model_table

    rows = model_table()
    for row in rows:
        row["offline_weights"] = "yes" if row["offline_weights"] else "no"
    _print_table(["name", "timm_name", "params_m", "imagenet_top1", "input_size", "offline_weights"], rows)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from components.tracking import compare_runs

    columns, rows = compare_runs(_params(args).mlflow, limit=args.limit)
    if not rows:
        print("No runs yet: train a model first (sortflow train)")
        return 0
    _print_table(columns, rows)
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    if args.keys:
        print("\n".join(valid_keys()))
    else:
        print(yaml.safe_dump(_params(args).to_dict(), sort_keys=False), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="sortflow", description="Image classification pipeline: dataset checks to Triton serving."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("check-dataset", parents=[common], help="check a ClsDataset (PaddleX check_dataset)")
    p.add_argument("dir", nargs="?", help="dataset folder (sets dataset.dir)")
    p.set_defaults(func=cmd_check_dataset)

    p = sub.add_parser("split", parents=[common], help="resplit train/val reproducibly, then check")
    p.add_argument("dir", nargs="?", help="dataset folder (sets dataset.dir)")
    p.set_defaults(func=cmd_split)

    dataset = sub.add_parser("dataset", help="convert or create datasets").add_subparsers(
        dest="dataset_command", required=True, metavar="ACTION"
    )
    p = dataset.add_parser("convert", parents=[common], help="one folder per class -> ClsDataset, split")
    p.add_argument("src", help="folder with one sub-folder of images per class")
    p.add_argument("dst", help="new ClsDataset folder")
    p.set_defaults(func=cmd_convert)
    p = dataset.add_parser("demo", help="write the bundled demo dataset (handwritten digits)")
    p.add_argument("dst", help="folder to create, e.g. data/")
    p.add_argument("--force", action="store_true", help="replace an existing folder")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", parents=[common], help="train a model on a checked dataset (MLflow tracked)")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("evaluate", parents=[common], help="top-1/top-5, per-class metrics, confusion matrix")
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("models", help="the model zoo: PaddleX names, timm names, sizes, ImageNet top-1")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("compare", parents=[common], help="recent training runs side by side")
    p.add_argument("--limit", type=int, default=10, help="how many recent runs (default 10)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("params", parents=[common], help="print the resolved parameters")
    p.add_argument("--keys", action="store_true", help="list every section.key name instead")
    p.set_defaults(func=cmd_params)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    # Our own steps log at INFO; libraries (GX, matplotlib, ...) only when something is wrong.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("components").setLevel(logging.INFO)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except SortflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
