"""The fit loop: the model, optimizer, schedule and weight average that training carries from epoch to epoch,
one epoch of training and one of validation, reseeded from (train.seed, epoch) so that a resumed run repeats
exactly what a straight run would do."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from components.core.config import TrainParams
from components.core.errors import InputError
from components.data.loader import batch_mixer, model_input
from components.model.distributed import Dist, all_sum, nonfinite_ranks
from components.model.metrics import correct_at_k, predict_logits
from components.model.optim import WeightAverage, build_optimizer, lr_factor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Loop:
    """What every part of the loop reads: the parameters, the number of classes, this process's place and
    its device."""

    t: TrainParams
    num_classes: int
    dist: Dist
    device: torch.device


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


def loader(
    dataset: Any, batch_size: int, seed: int, dist: Dist, workers: int, shuffle: bool, pin: bool = False
) -> Any:
    """Batches of `dataset`: shuffled from `seed` (each rank its share of one order), or in order with every
    image exactly once (validation)."""
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


def progress_bar(enabled: bool) -> Any:
    """The per-epoch progress bar on stderr (shown by rank 0 only)."""
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


def build_fit(t: TrainParams, model: nn.Module, steps: int, dist: Dist, device: torch.device, ckpt: dict | None) -> Fit:
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


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's shuffle, the same on every rank (the sampler splits one order among them)."""
    return seed * 1000 + epoch


def augment_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of one rank's augmentation in one epoch: its own per rank (the same crops on every rank would
    waste the extra GPUs), rank 0's as a single process has it, so resumes and single runs repeat exactly."""
    return epoch_seed(seed, epoch) + 1_000_003 * rank


def train_epoch(fit: Fit, data: Any, loop: Loop, epoch: int) -> dict:
    """One pass over the train images; reseeded from (train.seed, epoch) so a resumed run repeats it exactly.
    Every rank shuffles alike (the sampler splits one order) and augments with its own seed."""
    t, dist, device = loop.t, loop.dist, loop.device
    torch.manual_seed(augment_seed(t.seed, epoch, dist.rank))  # augmentation and dropout draw from it
    batches = loader(data, t.batch_size, epoch_seed(t.seed, epoch), dist, t.num_workers, True, device.type == "cuda")
    if hasattr(batches.sampler, "set_epoch"):
        batches.sampler.set_epoch(epoch)
    criterion = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)  # also smooths mixed labels
    mix = batch_mixer(t.mixup_alpha, t.cutmix_alpha, loop.num_classes)
    fit.net.train()
    loss_sum = seen = 0.0
    norm_sum = torch.zeros((), device=device)  # the gradients' norms before clipping, read once per epoch
    began = time.perf_counter()
    with progress_bar(dist.main) as progress, _out_of_memory_hint(loop):
        task = progress.add_task(f"epoch {epoch}/{t.epochs}", total=len(batches), loss=0.0, ips=0.0)
        for images, labels in batches:
            if mix is not None:
                images, labels = mix(images, labels)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = criterion(fit.net(model_input(images, device)), labels)
            bad = nonfinite_ranks(loss, dist, device)
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
    loss_sum, seen = all_sum([loss_sum, seen], dist, device)
    return {
        "train_loss": loss_sum / max(seen, 1),
        "lr": fit.optimizer.param_groups[0]["lr"],
        "img_per_s": seen / seconds,
        **({"grad_norm": norm_sum.item() / max(len(batches), 1)} if t.clip_grad_norm > 0 else {}),
    }


@contextlib.contextmanager
def _out_of_memory_hint(loop: Loop) -> Iterator[None]:
    """CUDA out of memory, said with what to change: the batch size is per device."""
    t, dist, device = loop.t, loop.dist, loop.device
    try:
        yield
    except torch.cuda.OutOfMemoryError as exc:
        raise InputError(
            f"CUDA ran out of memory on {device} (rank {dist.rank}): train.batch_size={t.batch_size} is per "
            f"device, so each of the {dist.world} processes holds a batch of {t.batch_size}; lower it, e.g. "
            f"-o train.batch_size={max(1, t.batch_size // 2)}, or lower train.image_size ({t.image_size})"
        ) from exc


def validate(fit: Fit, data: Any, loop: Loop) -> dict:
    """Val loss, top-1 and top-5 over every val image (each rank scores its share; the sums are combined)."""
    t, dist, device = loop.t, loop.dist, loop.device
    batches = loader(data, t.batch_size, 0, dist, t.num_workers, shuffle=False)
    logits, targets = predict_logits(fit.scored, batches, device)  # fp32, as `sortflow evaluate` scores it
    scores, labels = logits.numpy(), targets.numpy()
    loss = nn.functional.cross_entropy(logits, targets, reduction="sum").item() if len(targets) else 0.0
    top1, top5, loss, n = all_sum(
        [
            float(correct_at_k(scores, labels, 1)),
            float(correct_at_k(scores, labels, min(5, loop.num_classes))),
            loss,
            float(len(targets)),
        ],
        dist,
        device,
    )
    return {"val_loss": loss / max(n, 1), "val_top1": top1 / max(n, 1), "val_top5": top5 / max(n, 1)}


def run_epoch(fit: Fit, data: dict[str, Any], loop: Loop, epoch: int) -> dict:
    """Train one epoch, then validate: the epoch's row of metrics.csv."""
    began = time.perf_counter()
    trained = train_epoch(fit, data["train"], loop, epoch)
    val = validate(fit, data["val"], loop)
    return {
        "epoch": epoch,
        "train_loss": trained["train_loss"],
        "lr": trained["lr"],
        **val,
        "img_per_s": trained["img_per_s"],
        **({"grad_norm": trained["grad_norm"]} if "grad_norm" in trained else {}),
        "seconds": time.perf_counter() - began,
    }


def steps_per_epoch(train_images: Any, t: TrainParams, dist: Dist) -> int:
    """Optimizer steps in one epoch of `train_images` on every rank; none is an error, a partial batch a warning."""
    steps = len(loader(train_images, t.batch_size, t.seed, dist, 0, shuffle=True))
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


