"""train: fine-tune a zoo model on a checked ClsDataset with PaddleX's recipe, tracked in MLflow.

SGD with momentum (or AdamW), linear warmup then cosine decay, weight decay, label smoothing; random
resized crop and flip for training, resize and center crop for validation. Every epoch reseeds from
(train.seed, epoch), so a run resumed from last.pt repeats exactly what a straight run would do.
Several devices run as torchrun processes (DDP); rank 0 alone writes files.
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
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from components.core.config import Params, TrainParams
from components.core.devices import parse_device, visible_devices
from components.core.errors import InputError, ParamsError
from components.core.fsutil import atomic_write_json, atomic_write_text
from components.core.locks import output_lock
from components.core.plots import figure, save_png
from components.data.loader import DataConfig, batch_mixer, model_input, read_classes, split_images
from components.data.partition import prepared_dataset
from components.integrations import mlflow_tracking
from components.model.checkpoints import BEST, LAST, check_resumable, load_checkpoint, save_checkpoint
from components.model.metrics import correct_at_k, predict_logits
from components.model.optim import WeightAverage, build_optimizer, lr_factor
from components.model.zoo import ModelSpec, create_model, get_spec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    output: Path
    best_top1: float
    last_top1: float
    epochs: int
    run_id: str | None


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Dist:
        return cls(
            int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
        )


def resolve_device(spec: str) -> tuple[str, list[int]]:
    """`cpu`, `auto`, `gpu`, `gpu:0` or `gpu:0,1,2,3` -> ("cpu" or "cuda", GPU numbers among the visible ones)."""
    device = parse_device(spec, "train.device")
    if device.kind == "cpu":
        return "cpu", []
    if device.kind == "auto":
        if torch.cuda.is_available():
            return "cuda", [0]
        log.warning("train.device=auto: no CUDA device found, training on the CPU")
        return "cpu", []
    if not torch.cuda.is_available():
        raise ParamsError(
            f"train.device={spec}: no CUDA device is available (torch {torch.__version__}); "
            "use -o train.device=cpu, or -o train.device=auto to fall back to the CPU"
        )
    visible_devices(device.ids, os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count(), "train.device")
    return "cuda", list(device.ids)


def torchrun_command(gpu_ids: list[int], argv: list[str], log_dir: Path) -> tuple[list[str], dict[str, str]]:
    """The command that runs `sortflow ARGV` as one DDP process per GPU, each seeing only its own GPU (mapped
    through a CUDA_VISIBLE_DEVICES that a scheduler set), with its output kept under `log_dir`."""
    visible = visible_devices(
        tuple(gpu_ids), os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count(), "train.device"
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={len(gpu_ids)}",
        f"--log-dir={log_dir}",
        "--redirects=3",
        "--tee=3",
        "-m",
        "components.cli",
        *argv,
    ]
    return command, {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(visible)}


def _rank_failure(log_dir: Path) -> str:
    """The end of the first failing rank's own output (torchrun keeps one stderr.log per rank)."""
    logs = sorted(log_dir.rglob("stderr.log"), key=lambda p: p.stat().st_mtime)
    for path in logs:
        text = path.read_text(errors="replace")
        if "Traceback" in text or "error:" in text:
            rank = path.parent.name
            return f"rank {rank} ({path}):\n" + "\n".join(text.splitlines()[-20:])
    return f"no rank left a traceback under {log_dir}"


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
            raise InputError(f"distributed training failed; {_rank_failure(log_dir)}")
    return None


def _loader(
    dataset: Any, batch_size: int, seed: int, dist: Dist, workers: int, shuffle: bool, pin: bool = False
) -> Any:
    from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

    generator = torch.Generator().manual_seed(seed)
    if dist.world > 1 and shuffle:
        sampler = DistributedSampler(dataset, dist.world, dist.rank, shuffle=True, seed=seed)
    elif dist.world > 1:
        sampler = list(range(dist.rank, len(dataset), dist.world))  # every val image exactly once
    else:
        sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        generator=generator,
        drop_last=shuffle and len(dataset) > batch_size,
        pin_memory=pin,  # page-locked batches, so that non_blocking copies to the GPU overlap the step
    )


def _all_sum(values: list[float], dist: Dist, device: torch.device) -> list[float]:
    if dist.world == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def _progress(enabled: bool) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  {task.fields[ips]:.1f} img/s"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        refresh_per_second=2,  # a redraw thread that wakes less often leaves the cores to the model
        disable=not enabled,
    )


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


@dataclass
class Fit:
    """What training carries from epoch to epoch, and what a checkpoint restores."""

    model: nn.Module
    net: nn.Module  # the model, wrapped in DDP when several processes train
    optimizer: torch.optim.Optimizer
    scheduler: Any
    average: WeightAverage | None = None  # train.ema_decay: the weights that are validated and saved
    start: int = 1
    best: float = -1.0
    history: list[dict[str, float]] = field(default_factory=list)
    run_id: str | None = None

    @property
    def scored(self) -> nn.Module:
        """The weights that are validated and saved as "model": the average when on, else the trained ones."""
        return self.average.model if self.average is not None else self.model


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


def _fit(t: TrainParams, model: nn.Module, steps: int, dist: Dist, device: torch.device, ckpt: dict | None) -> Fit:
    """The model on its device, the optimizer, the schedule and the weight average, restored from `ckpt`
    when resuming; `steps` is the number of steps per epoch."""
    model = model.to(device, memory_format=torch.channels_last)
    net: nn.Module = model
    if dist.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = build_optimizer(model, t)
    done = ckpt["epoch"] * steps if ckpt else 0  # where the schedule stands in this run's steps per epoch
    if ckpt:
        optimizer.load_state_dict(ckpt["optimizer"])
    for group in optimizer.param_groups:
        group["initial_lr"] = t.learning_rate
    average = WeightAverage(model, t.ema_decay, done) if t.ema_decay else None
    if average and ckpt:
        average.model.load_state_dict(ckpt["model"])
    warmup, total = t.warmup_epochs * steps, t.epochs * steps
    # Rebuilt from the epoch, not the old step count: a run resumed on another number of GPUs has other
    # steps per epoch, and the learning rate must stand where an uninterrupted run's would.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup, total), last_epoch=done - 1
    )
    fit = Fit(model, net, optimizer, scheduler, average)
    if ckpt:
        fit.start, fit.best, fit.history = ckpt["epoch"] + 1, ckpt["best_top1"], ckpt["history"]
        fit.run_id = ckpt["mlflow_run_id"]
    return fit


def augment_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of one rank's augmentation in one epoch: its own per rank (the same crops on every rank would
    waste the extra GPUs), rank 0's as a single process has it, so resumes and single runs repeat exactly."""
    return seed * 1000 + epoch + 1_000_003 * rank


def _nonfinite_ranks(loss: torch.Tensor, dist: Dist, device: torch.device) -> list[int]:
    """The ranks whose loss is NaN or infinite, known to every rank (so all stop together, none waits)."""
    bad = torch.zeros(dist.world, dtype=torch.float32, device=device)
    bad[dist.rank] = float(not torch.isfinite(loss.detach()).item())
    if dist.world > 1:
        torch.distributed.all_reduce(bad)
    return [rank for rank, flag in enumerate(bad.tolist()) if flag]


def _train_epoch(
    fit: Fit, data: Any, t: TrainParams, num_classes: int, epoch: int, dist: Dist, device: torch.device
) -> dict:
    """One pass over the train images; reseeded from (train.seed, epoch) so a resumed run repeats it exactly.
    Every rank shuffles alike (the sampler splits one order) and augments with its own seed."""
    epoch_seed = t.seed * 1000 + epoch
    torch.manual_seed(augment_seed(t.seed, epoch, dist.rank))  # augmentation and dropout draw from it
    loader = _loader(data, t.batch_size, epoch_seed, dist, t.num_workers, shuffle=True, pin=device.type == "cuda")
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    criterion = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)  # also smooths mixed labels
    mix = batch_mixer(t.mixup_alpha, t.cutmix_alpha, num_classes)
    fit.net.train()
    loss_sum = seen = 0.0
    norm_sum = torch.zeros((), device=device)  # the gradients' norms before clipping, read once per epoch
    began = time.perf_counter()
    with _progress(dist.main) as progress, _out_of_memory_hint(t, dist, device):
        task = progress.add_task(f"epoch {epoch}/{t.epochs}", total=len(loader), loss=0.0, ips=0.0)
        for images, labels in loader:
            if mix is not None:
                images, labels = mix(images, labels)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = criterion(fit.net(model_input(images, device)), labels)
            bad = _nonfinite_ranks(loss, dist, device)
            if bad:
                raise InputError(
                    f"the training loss became {loss.item()} in epoch {epoch} on rank(s) {bad}; lower "
                    f"train.learning_rate (now {t.learning_rate}) or raise train.batch_size (now {t.batch_size})"
                )
            fit.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if t.clip_grad_norm > 0:
                norm_sum += nn.utils.clip_grad_norm_(fit.net.parameters(), t.clip_grad_norm).detach()
            fit.optimizer.step()
            fit.scheduler.step()
            if fit.average is not None:
                fit.average.update(fit.model)
            loss_sum += loss.item() * len(labels)
            seen += len(labels)
            ips = seen * dist.world / (time.perf_counter() - began)
            progress.update(task, advance=1, loss=loss_sum / seen, ips=ips)
    seconds = time.perf_counter() - began
    loss_sum, seen = _all_sum([loss_sum, seen], dist, device)
    return {
        "train_loss": loss_sum / max(seen, 1),
        "lr": fit.optimizer.param_groups[0]["lr"],
        "img_per_s": seen / seconds,
        **({"grad_norm": norm_sum.item() / max(len(loader), 1)} if t.clip_grad_norm > 0 else {}),
    }


@contextlib.contextmanager
def _out_of_memory_hint(t: TrainParams, dist: Dist, device: torch.device) -> Iterator[None]:
    """CUDA out of memory, said with what to change: the batch size is per device."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as exc:
        raise InputError(
            f"CUDA ran out of memory on {device} (rank {dist.rank}): train.batch_size={t.batch_size} is per "
            f"device, so each of the {dist.world} processes holds a batch of {t.batch_size}; lower it, e.g. "
            f"-o train.batch_size={max(1, t.batch_size // 2)}, or lower train.image_size ({t.image_size})"
        ) from exc


def _validate(fit: Fit, data: Any, t: TrainParams, num_classes: int, dist: Dist, device: torch.device) -> dict:
    """Val loss, top-1 and top-5 over every val image (each rank scores its share; the sums are combined)."""
    loader = _loader(data, t.batch_size, 0, dist, t.num_workers, shuffle=False)
    logits, targets = predict_logits(fit.scored, loader, device)  # fp32, as `sortflow evaluate` scores it
    scores, labels = logits.numpy(), targets.numpy()
    loss = nn.functional.cross_entropy(logits, targets, reduction="sum").item() if len(targets) else 0.0
    top1, top5, loss, n = _all_sum(
        [
            float(correct_at_k(scores, labels, 1)),
            float(correct_at_k(scores, labels, min(5, num_classes))),
            loss,
            float(len(targets)),
        ],
        dist,
        device,
    )
    return {"val_loss": loss / max(n, 1), "val_top1": top1 / max(n, 1), "val_top5": top5 / max(n, 1)}


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
def _rank0_outputs(params: Params, root: Path, spec: ModelSpec, fit: Fit, dist: Dist) -> Iterator[Any]:
    """Rank 0's train.log, config.yaml and MLflow run (None on the other ranks, which write nothing)."""
    if not dist.main:
        yield None
        return
    out = Path(params.train.output)
    with _train_log(out):
        atomic_write_text(out / "config.yaml", yaml.safe_dump(params.to_dict(), sort_keys=False))
        name = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        with mlflow_tracking.training_run(params, root, name, fit.run_id) as run:
            fit.run_id = run.run_id
            yield run


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
    device = _device(params.train.device, dist)
    with _terminated_on_sigterm():
        if dist.world > 1:
            backend = "nccl" if device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend, device_id=device if device.type == "cuda" else None)
        try:
            return _train(params, root, dist, device)
        finally:
            if dist.world > 1:
                torch.distributed.destroy_process_group()


def _device(spec: str, dist: Dist) -> torch.device:
    """This process's device. A rank under torchrun sees only its own GPUs, numbered from 0, so it takes
    cuda:LOCAL_RANK (the launcher mapped train.device already) and makes it current for NCCL."""
    if dist.world == 1:
        kind, gpu_ids = resolve_device(spec)
        return torch.device("cuda", gpu_ids[0]) if kind == "cuda" else torch.device("cpu")
    if parse_device(spec, "train.device").kind == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    if dist.local_rank >= torch.cuda.device_count():
        raise ParamsError(
            f"rank {dist.rank} (local rank {dist.local_rank}) sees only {torch.cuda.device_count()} GPUs; "
            "start one process per GPU (torchrun --nproc-per-node)"
        )
    device = torch.device("cuda", dist.local_rank)
    torch.cuda.set_device(device)  # else every rank's first collective runs on cuda:0 ("Duplicate GPU")
    return device


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: the run stops as on Ctrl-C (its MLflow run ends KILLED, not left RUNNING)."""


@contextlib.contextmanager
def _terminated_on_sigterm() -> Iterator[None]:
    def stop(signum: int, _frame: Any) -> None:
        raise Terminated(f"stopped by signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread (a Prefect task runner): its own handling applies
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _epoch(
    fit: Fit, data: dict[str, Any], t: TrainParams, num_classes: int, epoch: int, dist: Dist, device: torch.device
) -> dict:
    """Train one epoch, then validate: the epoch's row of metrics.csv."""
    began = time.perf_counter()
    trained = _train_epoch(fit, data["train"], t, num_classes, epoch, dist, device)
    val = _validate(fit, data["val"], t, num_classes, dist, device)
    return {
        "epoch": epoch,
        "train_loss": trained["train_loss"],
        "lr": trained["lr"],
        **val,
        "img_per_s": trained["img_per_s"],
        **({"grad_norm": trained["grad_norm"]} if "grad_norm" in trained else {}),
        "seconds": time.perf_counter() - began,
    }


def _finish(out: Path, run: Any, fit: Fit, result: dict[str, Any]) -> None:
    """After the last epoch: the curves, the final train_result.json, and the files as MLflow artifacts."""
    write_curves(fit.history, out / "curves.png")
    atomic_write_json(out / "train_result.json", result)
    run.log_artifacts(
        out / name for name in ("config.yaml", "train.log", "curves.png", "metrics.csv", "train_result.json")
    )


def _train(params: Params, root: Path, dist: Dist, device: torch.device) -> TrainResult:
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
    steps = _steps_per_epoch(data["train"], t, dist)
    fit = _fit(t, model, steps, dist, device, ckpt)
    with _rank0_outputs(params, root, spec, fit, dist) as run:
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
            row = _epoch(fit, data, t, len(classes), epoch, dist, device)
            fit.history.append(row)
            improved, fit.best = row["val_top1"] > fit.best, max(fit.best, row["val_top1"])
            if run is not None:
                _log_epoch(row, t.epochs)
                _save_epoch(out, state, fit, improved, _train_result(spec, classes, fit, done=False))
                run.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
        if run is not None:
            _finish(out, run, fit, _train_result(spec, classes, fit, done=True))
    last = fit.history[-1]["val_top1"] if fit.history else 0.0
    return TrainResult(out, fit.best, last, len(fit.history), fit.run_id)


def _decode_workers() -> int:
    """Decoding processes for this rank: the machine's cores shared among the ranks on this node."""
    return max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


def _steps_per_epoch(train_images: Any, t: TrainParams, dist: Dist) -> int:
    steps = len(_loader(train_images, t.batch_size, t.seed, dist, 0, shuffle=True))
    if len(train_images) < t.batch_size * dist.world:
        log.warning(
            "train has %d images, fewer than one global batch (train.batch_size %d x %d processes): each epoch "
            "is %d step(s) of a partial batch; lower train.batch_size",
            len(train_images),
            t.batch_size,
            dist.world,
            steps,
        )
    if steps == 0:
        raise InputError(f"train has {len(train_images)} images: not one training step per epoch")
    return steps


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
