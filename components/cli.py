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
    args = build_parser().parse_args(argv)
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
