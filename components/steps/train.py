"""train: fine-tune a zoo model on a checked ClsDataset with PaddleX's recipe, tracked in MLflow.

SGD with momentum (or AdamW), linear warmup then cosine decay, weight decay, label smoothing; random
resized crop and flip for training, resize and center crop for validation. The loop itself is in
`model/fit.py` (every epoch reseeds from (train.seed, epoch), so a run resumed from last.pt repeats exactly
what a straight run would do); several devices run as torchrun processes (`model/distributed.py`). This
step holds the run: the dataset, the resume, the outputs (rank 0 alone writes files) and MLflow.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from components.core.config import Params, TrainParams
from components.core.errors import InputError, ParamsError
from components.core.fsutil import atomic_write_json, atomic_write_text
from components.core.locks import output_lock
from components.core.plots import figure, save_png
from components.core.results import StepResult
from components.data.loader import DataConfig, read_classes, split_images
from components.data.partition import prepared_dataset
from components.integrations import mlflow_tracking
from components.model.checkpoints import BEST, LAST, check_resumable, load_checkpoint, save_checkpoint
from components.model.distributed import (
    Dist,
    process_device,
    process_group,
    rank_failure,
    resolve_device,
    torchrun_command,
)
from components.model.fit import Fit, Loop, build_fit, run_epoch, steps_per_epoch
from components.model.zoo import ModelSpec, create_model, get_spec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult(StepResult):
    output: Path
    best_top1: float
    last_top1: float
    epochs: int
    run_id: str | None

    def text(self) -> str:
        return (
            f"Trained {self.epochs} epochs: best val top-1 {self.best_top1:.4f}, last {self.last_top1:.4f}\n"
            f"Checkpoints and reports: {self.output} (MLflow run {self.run_id})"
        )


def run_training(params: Params, argv: list[str]) -> TrainResult | None:
    """Train here; with several GPUs, run `sortflow ARGV` under torchrun instead (None: its ranks trained)."""
    _, gpu_ids = resolve_device(params.train.device)
    if "WORLD_SIZE" in os.environ:  # a rank under torchrun: its launcher holds the lock of train.output
        return train(params)
    with output_lock(params.train.output, "sortflow train", params.locks.timeout):
        if len(gpu_ids) <= 1:
            return train(params)
        prepared_dataset(params)  # checked once, before any process group waits on it
        log_dir = Path(params.train.output) / "ranks"
        shutil.rmtree(log_dir, ignore_errors=True)
        command, env = torchrun_command(gpu_ids, argv, log_dir)
        if subprocess.run(command, env=env).returncode != 0:
            raise InputError(f"distributed training failed; {rank_failure(log_dir)}")
    return None


def write_curves(history: list[dict[str, float]], path: Path) -> None:
    epochs = [h["epoch"] for h in history]
    fig = figure(12, 3.5)
    for i, (keys, title) in enumerate(
        [(("train_loss", "val_loss"), "loss"), (("val_top1", "val_top5"), "accuracy"), (("lr",), "learning rate")]
    ):
        ax = fig.add_subplot(1, 3, i + 1)
        for key in keys:
            ax.plot(epochs, [h[key] for h in history], marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.legend()
    save_png(fig, path)


def _write_history(history: list[dict[str, float]], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buffer.getvalue())


def _train_result(spec: ModelSpec, classes: list[str], fit: Fit, done: bool) -> dict[str, Any]:
    """train_result.json, in PaddleX's shape."""
    last = fit.history[-1]["val_top1"] if fit.history else 0.0
    return {
        "model_name": spec.name,
        "label_dict": {str(i): name for i, name in enumerate(classes)},
        "train_log": "train.log",
        "config": "config.yaml",
        "models": {"last": {"score": last, "path": LAST}, "best": {"score": fit.best, "path": BEST}},
        "history": fit.history,
        "mlflow_run_id": fit.run_id,
        "done_flag": done,
    }


def _prepared_root(params: Params, dist: Dist) -> Path:
    """The dataset to train on, before any process group exists: rank 0 checks it (a failure ends rank 0,
    and torchrun then stops the others); the other ranks only locate it."""
    return prepared_dataset(params, check=dist.main)


def _classes(root: Path, t: TrainParams) -> list[str]:
    classes = read_classes(root)
    if t.num_classes and t.num_classes != len(classes):
        raise ParamsError(
            f"train.num_classes={t.num_classes}, but {root / 'label.txt'} has {len(classes)} classes; "
            "set train.num_classes=0 to take the number from label.txt"
        )
    return classes


def _resume_checkpoint(t: TrainParams, spec: ModelSpec, classes: list[str]) -> dict[str, Any] | None:
    """last.pt of `train.output` when `train.resume` is set (it must be of this model and these classes)."""
    if not t.resume:
        return None
    path = Path(t.output) / LAST
    if not path.is_file():
        raise InputError(f"train.resume=true, but {path} does not exist; train without resume first")
    ckpt = load_checkpoint(path)
    check_resumable(ckpt, spec.timm_name, spec.name, classes, path)
    return ckpt


def _save_epoch(out: Path, state: dict[str, Any], fit: Fit, improved: bool, summary: dict[str, Any]) -> None:
    """last.pt (and best.pt when val top-1 improved), metrics.csv and train_result.json after an epoch."""
    # "model" holds the weights that were validated: evaluate and export use them; a resume trains on.
    weights = {"model": fit.scored.state_dict()}
    if fit.average is not None:
        weights["trained_model"] = fit.model.state_dict()
    checkpoint = {
        **state,
        **weights,
        "optimizer": fit.optimizer.state_dict(),
        "epoch": fit.history[-1]["epoch"],
        "best_top1": fit.best,
        "history": fit.history,
    }
    save_checkpoint(out / LAST, checkpoint)
    if improved:
        save_checkpoint(out / BEST, checkpoint)
    _write_history(fit.history, out / "metrics.csv")
    atomic_write_json(out / "train_result.json", summary)


@contextlib.contextmanager
def _train_log(out: Path) -> Iterator[None]:
    """The steps' log lines also go to `train.output/train.log` while training runs."""
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("components").addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger("components").removeHandler(handler)
        handler.close()


@contextlib.contextmanager
def _rank0_outputs(
    params: Params, root: Path, spec: ModelSpec, fit: Fit, dist: Dist, sigterm: Sigterm
) -> Iterator[Any]:
    """Rank 0's train.log, config.yaml and MLflow run (None on the other ranks, which write nothing). The run
    starts and finishes with SIGTERM deferred, as every MLflow write of the training does."""
    if not dist.main:
        yield None
        return
    out = Path(params.train.output)
    with _train_log(out), contextlib.ExitStack() as mlflow_run:
        atomic_write_text(out / "config.yaml", yaml.safe_dump(params.to_dict(), sort_keys=False))
        name = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        with sigterm.deferred():
            run = mlflow_run.enter_context(mlflow_tracking.training_run(params, root, name, fit.run_id))
        fit.run_id = run.run_id
        yield run
        with sigterm.deferred():
            mlflow_run.close()  # the run ends FINISHED


def train(params: Params) -> TrainResult:
    """Train `train.model` on the prepared dataset (split.output, else dataset.dir), tracked in MLflow.

    Reads the dataset (which must pass check-dataset) and, with `train.resume`, last.pt. Writes to
    `train.output`: last.pt and best.pt after every epoch, metrics.csv, train_result.json, config.yaml,
    train.log and curves.png; logs parameters, per-epoch metrics and these files to an MLflow run. Raises
    SortflowError for a dataset that fails its check, a checkpoint that does not fit, a loss that becomes
    NaN on any rank or CUDA running out of memory; ParamsError for a device or class count that does not fit.
    SIGTERM (torchrun stopping the ranks, a scheduler's preemption) ends the MLflow run KILLED.
    """
    dist = Dist.from_env()
    root = _prepared_root(params, dist)
    device = process_device(params.train.device, dist)
    with terminated_on_sigterm() as sigterm, process_group(dist, device):
        return _train(params, root, dist, device, sigterm)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: the run stops as on Ctrl-C (its MLflow run ends KILLED, not left RUNNING)."""


@dataclass
class Sigterm:
    """SIGTERM raises Terminated where the training is, except inside `deferred()`, which raises it when the
    block ends: an exception raised halfway through an MLflow write would leave the tracking store's SQLite
    transaction open, locking the store against the write that ends the run KILLED."""

    deferring: int = 0
    pending: int | None = None

    def handle(self, signum: int, _frame: Any) -> None:
        if self.deferring:
            self.pending = signum
            return
        raise Terminated(f"stopped by signal {signum}")

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A block that SIGTERM does not interrupt; a SIGTERM that arrived in it is raised at its end."""
        self.deferring += 1
        try:
            yield
        finally:
            self.deferring -= 1
        if self.pending is not None:
            self.handle(self.pending, None)  # raises once no outer block defers it


@contextlib.contextmanager
def terminated_on_sigterm() -> Iterator[Sigterm]:
    """SIGTERM handled by a Sigterm while the block runs (in the main thread; elsewhere, as a Prefect task
    runner's thread, the caller's own handling applies and the Sigterm never fires)."""
    sigterm = Sigterm()
    try:
        previous = signal.signal(signal.SIGTERM, sigterm.handle)
    except ValueError:  # not the main thread
        yield sigterm
        return
    try:
        yield sigterm
    finally:
        signal.signal(signal.SIGTERM, previous)


def _finish(out: Path, run: Any, fit: Fit, result: dict[str, Any]) -> None:
    """After the last epoch: the curves, the final train_result.json, and the files as MLflow artifacts."""
    write_curves(fit.history, out / "curves.png")
    atomic_write_json(out / "train_result.json", result)
    run.log_artifacts(
        out / name for name in ("config.yaml", "train.log", "curves.png", "metrics.csv", "train_result.json")
    )


def _train(params: Params, root: Path, dist: Dist, device: torch.device, sigterm: Sigterm) -> TrainResult:
    t, spec = params.train, get_spec(params.train.model)
    out = Path(t.output)
    classes = _classes(root, t)
    ckpt = _resume_checkpoint(t, spec, classes)
    torch.manual_seed(t.seed)
    model = create_model(
        spec, len(classes), "none" if ckpt else t.pretrained, drop_rate=t.drop_rate, drop_path_rate=t.drop_path_rate
    )
    if ckpt:
        model.load_state_dict(ckpt.get("trained_model", ckpt["model"]))
    cfg = DataConfig.for_model(spec.timm_cfg(), t.image_size, t.crop_scale_min, t.augment)
    data = split_images(root, cfg, t.cache_mb, _decode_workers())
    steps = steps_per_epoch(data["train"], t, dist)
    fit = build_fit(t, model, steps, dist, device, ckpt)
    loop = Loop(t, len(classes), dist, device)
    with _rank0_outputs(params, root, spec, fit, dist, sigterm) as run:
        state = {
            "model_name": spec.name,
            "timm_name": spec.timm_name,
            "num_classes": len(classes),
            "label_names": classes,
            "data_config": asdict(cfg),
            "mlflow_run_id": fit.run_id,
            "steps_per_epoch": steps,  # with world_size: a resume on another number of GPUs keeps the schedule
            "world_size": dist.world,
        }
        if run is not None:
            _log_start(spec, root, data, classes, device, dist, fit.run_id)
        for epoch in range(fit.start, t.epochs + 1):
            row = run_epoch(fit, data, loop, epoch)
            fit.history.append(row)
            improved, fit.best = row["val_top1"] > fit.best, max(fit.best, row["val_top1"])
            if run is not None:
                _log_epoch(row, t.epochs)
                _save_epoch(out, state, fit, improved, _train_result(spec, classes, fit, done=False))
                with sigterm.deferred():
                    run.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
        if run is not None:
            with sigterm.deferred():
                _finish(out, run, fit, _train_result(spec, classes, fit, done=True))
    last = fit.history[-1]["val_top1"] if fit.history else 0.0
    return TrainResult(out, fit.best, last, len(fit.history), fit.run_id)


def _decode_workers() -> int:
    """Decoding processes for this rank: the machine's cores shared among the ranks on this node."""
    return max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


def _log_start(
    spec: ModelSpec, root: Path, data: dict, classes: list[str], device: torch.device, dist: Dist, run_id: str | None
) -> None:
    log.info(
        "Training %s (%s) on %s: %d train / %d val images, %d classes, %s x%d, MLflow run %s",
        *(spec.name, spec.timm_name, root, len(data["train"]), len(data["val"]), len(classes)),
        *(device.type, dist.world, run_id),
    )


def _log_epoch(row: dict[str, float], epochs: int) -> None:
    log.info(
        "epoch %d/%d: loss %.4f, val top-1 %.4f, top-5 %.4f, %.1f img/s, lr %.5f",
        *(row["epoch"], epochs, row["train_loss"], row["val_top1"], row["val_top5"], row["img_per_s"], row["lr"]),
    )
