"""train: fine-tune a zoo model on a checked ClsDataset with PaddleX's recipe, tracked in MLflow.

SGD with momentum (or AdamW), linear warmup then cosine decay, weight decay, label smoothing; random
resized crop and flip for training, resize and center crop for validation. Every epoch reseeds from
(train.seed, epoch), so a run resumed from last.pt repeats exactly what a straight run would do.
Several devices run as torchrun processes (DDP); rank 0 alone writes files.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from components.config import Params
from components.errors import ParamsError, SortflowError
from components.evaluate import correct_at_k, load_checkpoint, predict_logits
from components.fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text
from components.loader import DataConfig, model_input, read_classes, split_images
from components.models import ModelSpec, create_model, get_spec
from components.split import prepared_dataset

log = logging.getLogger(__name__)

LAST, BEST = "last.pt", "best.pt"


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
    """`cpu`, `auto`, `gpu`, `gpu:0` or `gpu:0,1,2,3` -> ("cpu" or "cuda", GPU ids)."""
    spec = spec.strip().lower()
    if spec == "cpu":
        return "cpu", []
    if spec == "auto":
        if torch.cuda.is_available():
            return "cuda", [0]
        log.warning("train.device=auto: no CUDA device found, training on the CPU")
        return "cpu", []
    if spec == "gpu" or spec.startswith("gpu:"):
        try:
            ids = [0] if spec == "gpu" else [int(x) for x in spec[4:].split(",")]
        except ValueError:
            raise ParamsError(f"train.device={spec!r}: expected gpu:N or gpu:N,M,... with integer ids") from None
        if not torch.cuda.is_available():
            raise ParamsError(
                f"train.device={spec}: no CUDA device is available (torch {torch.__version__}); "
                "use -o train.device=cpu, or -o train.device=auto to fall back to the CPU"
            )
        missing = [i for i in ids if i >= torch.cuda.device_count()]
        if missing:
            raise ParamsError(f"train.device={spec}: GPU {missing} not found; {torch.cuda.device_count()} present")
        return "cuda", ids
    raise ParamsError(f"train.device={spec!r}: expected cpu, auto, gpu, gpu:N or gpu:N,M,...")


def torchrun_command(gpu_ids: list[int], argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """The command that runs `sortflow ARGV` as one DDP process per GPU."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={len(gpu_ids)}",
        "-m",
        "components.cli",
        *argv,
    ]
    return command, {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(map(str, gpu_ids))}


def run_training(params: Params, argv: list[str]) -> TrainResult | None:
    """Train here; with several GPUs, run `sortflow ARGV` under torchrun instead (None: its ranks trained)."""
    _, gpu_ids = resolve_device(params.train.device)
    if len(gpu_ids) <= 1 or "WORLD_SIZE" in os.environ:
        return train(params)
    command, env = torchrun_command(gpu_ids, argv)
    if subprocess.run(command, env=env).returncode != 0:
        raise SortflowError(f"distributed training failed; see {params.train.output}/train.log")
    return None


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup to the peak learning rate, then cosine decay to zero."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def check_compatible(ckpt: dict[str, Any], spec: ModelSpec, classes: list[str], path: Path) -> None:
    if ckpt["timm_name"] != spec.timm_name:
        raise SortflowError(
            f"{path}: a checkpoint of {ckpt['model_name']} ({ckpt['timm_name']}), but train.model is "
            f"{spec.name} ({spec.timm_name}); use the same model or another train.output"
        )
    if ckpt["label_names"] != classes:
        raise SortflowError(
            f"{path}: trained on {ckpt['num_classes']} classes ({', '.join(ckpt['label_names'][:5])}...), "
            f"but label.txt has {len(classes)} ({', '.join(classes[:5])}...); use another train.output"
        )


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write to a temporary file and rename, so an interrupted run always leaves a loadable checkpoint."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _loader(dataset: Any, batch_size: int, seed: int, dist: Dist, workers: int, shuffle: bool) -> Any:
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
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(12, 3.5))
    FigureCanvasAgg(fig)
    for i, (keys, title) in enumerate(
        [(("train_loss", "val_loss"), "loss"), (("val_top1", "val_top5"), "accuracy"), (("lr",), "learning rate")]
    ):
        ax = fig.add_subplot(1, 3, i + 1)
        for key in keys:
            ax.plot(epochs, [h[key] for h in history], marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())


def _write_history(history: list[dict[str, float]], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buffer.getvalue())


def _train_result(
    spec: ModelSpec, classes: list[str], history: list[dict[str, float]], best: float, run_id: str | None, done: bool
) -> dict[str, Any]:
    last = history[-1]["val_top1"] if history else 0.0
    return {
        "model_name": spec.name,
        "label_dict": {str(i): name for i, name in enumerate(classes)},
        "train_log": "train.log",
        "config": "config.yaml",
        "models": {"last": {"score": last, "path": LAST}, "best": {"score": best, "path": BEST}},
        "history": history,
        "mlflow_run_id": run_id,
        "done_flag": done,
    }


def train(params: Params) -> TrainResult:
    """Train `train.model` on `split.output` (else `dataset.dir`); write checkpoints and reports to `train.output`."""
    dist = Dist.from_env()
    kind, gpu_ids = resolve_device(params.train.device)
    if dist.world > 1:
        torch.distributed.init_process_group("nccl" if kind == "cuda" else "gloo")
    try:
        return _train(
            params,
            dist,
            torch.device("cuda", dist.local_rank if dist.world > 1 else gpu_ids[0])
            if kind == "cuda"
            else torch.device("cpu"),
        )
    finally:
        if dist.world > 1:
            torch.distributed.destroy_process_group()


def _train(params: Params, dist: Dist, device: torch.device) -> TrainResult:
    t = params.train
    spec = get_spec(t.model)
    out = Path(t.output)
    root, failure = Path(params.split.output or params.dataset.dir), None
    if dist.main:
        try:
            root = prepared_dataset(params)
        except SortflowError as exc:
            failure = str(exc)
    if dist.world > 1:
        shared = [failure]
        torch.distributed.broadcast_object_list(shared, src=0)
        failure = shared[0]
    if failure:
        raise SortflowError(failure)
    classes = read_classes(root)
    if t.num_classes and t.num_classes != len(classes):
        raise ParamsError(
            f"train.num_classes={t.num_classes}, but {root / 'label.txt'} has {len(classes)} classes; "
            "set train.num_classes=0 to take the number from label.txt"
        )

    ckpt = None
    if t.resume:
        if not (out / LAST).is_file():
            raise SortflowError(f"train.resume=true, but {out / LAST} does not exist; train without resume first")
        ckpt = load_checkpoint(out / LAST)
        check_compatible(ckpt, spec, classes, out / LAST)

    torch.manual_seed(t.seed)
    model = create_model(spec, len(classes), "none" if ckpt else t.pretrained)
    if ckpt:
        model.load_state_dict(ckpt["model"])
    cfg = DataConfig.for_model(spec.timm_cfg(), t.image_size, t.crop_scale_min)
    data = split_images(root, cfg, t.cache_mb)
    model = model.to(device, memory_format=torch.channels_last)
    net: nn.Module = model
    if dist.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    # One parameter group, weight decay on every tensor, as PaddleX's Momentum with L2 regularization;
    # timm's optimizer factory (Nesterov, split groups) measured 7-10% slower per step on the CPU.
    if t.optimizer == "sgd":
        optimizer = torch.optim.SGD(
            model.parameters(), lr=t.learning_rate, momentum=t.momentum, weight_decay=t.weight_decay
        )
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay)
    steps = len(_loader(data["train"], t.batch_size, t.seed, dist, 0, shuffle=True))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, t.warmup_epochs * steps, t.epochs * steps)
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
    amp = device.type == "cuda"
    start, best, history, run_id = 1, -1.0, [], None
    if ckpt:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start, best, history, run_id = ckpt["epoch"] + 1, ckpt["best_top1"], ckpt["history"], ckpt["mlflow_run_id"]

    mlflow_client = handler = None
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(out / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("components").addHandler(handler)
        atomic_write_text(out / "config.yaml", yaml.safe_dump(params.to_dict(), sort_keys=False))
        from components import tracking

        mlflow_client, experiment_id = tracking.client(params.mlflow)
        if run_id is None:
            run = mlflow_client.create_run(
                experiment_id,
                run_name=f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                tags=tracking.lineage_tags(params, root),
            )
            run_id = run.info.run_id
            from mlflow.entities import Param

            mlflow_client.log_batch(run_id, params=[Param(k, v) for k, v in tracking.flat_params(params).items()])
        else:
            mlflow_client.update_run(run_id, status="RUNNING")
        log.info(
            "Training %s (%s) on %s: %d train / %d val images, %d classes, %s x%d, MLflow run %s",
            spec.name,
            spec.timm_name,
            root,
            len(data["train"]),
            len(data["val"]),
            len(classes),
            device.type,
            dist.world,
            run_id,
        )

    state: dict[str, Any] = {
        "model_name": spec.name,
        "timm_name": spec.timm_name,
        "num_classes": len(classes),
        "label_names": classes,
        "data_config": asdict(cfg),
        "mlflow_run_id": run_id,
    }
    try:
        for epoch in range(start, t.epochs + 1):
            epoch_seed = t.seed * 1000 + epoch
            torch.manual_seed(epoch_seed)  # augmentation and dropout draw from it
            loader = _loader(data["train"], t.batch_size, epoch_seed, dist, t.num_workers, shuffle=True)
            if hasattr(loader.sampler, "set_epoch"):
                loader.sampler.set_epoch(epoch)
            net.train()
            loss_sum = seen = 0.0
            began = time.perf_counter()
            with _progress(dist.main) as progress:
                task = progress.add_task(f"epoch {epoch}/{t.epochs}", total=len(loader), loss=0.0, ips=0.0)
                for images, labels in loader:
                    images = model_input(images, device)
                    labels = labels.to(device, non_blocking=True)
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                        loss = criterion(net(images), labels)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    if not math.isfinite(loss.item()):
                        raise SortflowError(
                            f"the training loss became {loss.item()} in epoch {epoch}; lower train.learning_rate "
                            f"(now {t.learning_rate}) or raise train.batch_size (now {t.batch_size})"
                        )
                    loss_sum += loss.item() * len(labels)
                    seen += len(labels)
                    ips = seen * dist.world / (time.perf_counter() - began)
                    progress.update(task, advance=1, loss=loss_sum / seen, ips=ips)
            train_seconds = time.perf_counter() - began
            loss_sum, seen = _all_sum([loss_sum, seen], dist, device)

            val_loader = _loader(data["val"], t.batch_size, 0, dist, t.num_workers, shuffle=False)
            logits, targets = predict_logits(model, val_loader, device, amp)
            k5 = min(5, len(classes))
            val = _all_sum(
                [
                    float(correct_at_k(logits, targets, 1)),
                    float(correct_at_k(logits, targets, k5)),
                    nn.functional.cross_entropy(logits, targets, reduction="sum").item(),
                    float(len(targets)),
                ],
                dist,
                device,
            )
            row = {
                "epoch": epoch,
                "train_loss": loss_sum / max(seen, 1),
                "lr": optimizer.param_groups[0]["lr"],
                "val_loss": val[2] / max(val[3], 1),
                "val_top1": val[0] / max(val[3], 1),
                "val_top5": val[1] / max(val[3], 1),
                "img_per_s": seen / train_seconds,
                "seconds": time.perf_counter() - began,
            }
            history.append(row)
            improved = row["val_top1"] > best
            best = max(best, row["val_top1"])
            if dist.main:
                log.info(
                    "epoch %d/%d: loss %.4f, val top-1 %.4f, top-5 %.4f, %.1f img/s, lr %.5f",
                    epoch,
                    t.epochs,
                    row["train_loss"],
                    row["val_top1"],
                    row["val_top5"],
                    row["img_per_s"],
                    row["lr"],
                )
                checkpoint = {
                    **state,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch,
                    "best_top1": best,
                    "history": history,
                }
                save_checkpoint(out / LAST, checkpoint)
                if improved:
                    save_checkpoint(out / BEST, checkpoint)
                _write_history(history, out / "metrics.csv")
                atomic_write_json(out / "train_result.json", _train_result(spec, classes, history, best, run_id, False))
                from mlflow.entities import Metric

                now = int(time.time() * 1000)
                mlflow_client.log_batch(
                    run_id, metrics=[Metric(k, float(v), now, epoch) for k, v in row.items() if k != "epoch"]
                )
        if dist.main:
            write_curves(history, out / "curves.png")
            atomic_write_json(out / "train_result.json", _train_result(spec, classes, history, best, run_id, True))
            for name in ("config.yaml", "train.log", "curves.png", "metrics.csv", "train_result.json"):
                mlflow_client.log_artifact(run_id, str(out / name))
            mlflow_client.set_terminated(run_id, "FINISHED")
    except BaseException:
        if mlflow_client is not None:
            mlflow_client.set_terminated(run_id, "KILLED" if sys.exc_info()[0] is KeyboardInterrupt else "FAILED")
        raise
    finally:
        if handler is not None:
            logging.getLogger("components").removeHandler(handler)
            handler.close()
    return TrainResult(out, best, history[-1]["val_top1"] if history else 0.0, len(history), run_id)
