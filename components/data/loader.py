"""Training and evaluation data: images decoded once into a bounded store, then augmented per epoch.

Decoding JPEGs every epoch would keep the CPU cores busy with the data rather than the model, so each
image is decoded once (in a process pool) into uint8 arrays: in RAM up to `train.cache_mb`, and in a
memory-mapped file beyond it, so a dataset larger than RAM still trains.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode, v2

from components.core.errors import DatasetError
from components.data.cls_dataset import LABEL_FILE, SPLITS, label_names, list_file, read_list
from components.data.images import decode_for_training
from components.model.contract import DataConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    path: str
    label: int


def read_split(root: Path, split: str) -> list[Sample]:
    """The samples of train.txt or val.txt (a checked dataset: every line is well formed).

    A line whose path leaves `root` (a symbolic link that points outside it) is refused, never read.
    """
    samples = []
    for e in read_list(root / list_file(split)):
        if e.leaves(root):
            raise DatasetError(f"{root / e.list_file}:{e.line}: {e.path!r} leaves the dataset root; run check-dataset")
        samples.append(Sample(str(root / e.norm_path), int(e.label)))
    return samples


def read_classes(root: Path) -> list[str]:
    names = label_names(root / LABEL_FILE)
    return [names[i] for i in range(len(names))]


class ImageStore:
    """Decoded RGB images (H, W, 3, uint8): RAM up to a byte budget, then a memory-mapped spill file."""

    def __init__(self, paths: Sequence[str], budget_bytes: int, max_short_side: int, workers: int = 0) -> None:
        from rich.console import Console
        from rich.progress import track

        self._ram: list[np.ndarray | None] = [None] * len(paths)
        self._spilled: dict[int, tuple[int, tuple[int, ...]]] = {}
        # Lives as long as the store: the memory map reads from it; the OS deletes it on close.
        self._spill = tempfile.TemporaryFile(prefix="sortflow-images-")  # noqa: SIM115
        used = offset = 0
        workers = workers or os.cpu_count() or 1
        jobs = [(p, max_short_side) for p in paths]
        if workers > 1 and len(jobs) >= 64:
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            decoded = pool.map(decode_for_training, jobs, chunksize=16)
        else:
            pool, decoded = None, map(decode_for_training, jobs)
        try:
            console = Console(stderr=True)
            for i, array in enumerate(track(decoded, total=len(jobs), description="Decoding", console=console)):
                if used + array.nbytes <= budget_bytes:
                    self._ram[i] = array
                    used += array.nbytes
                else:
                    self._spill.write(array.tobytes())
                    self._spilled[i] = (offset, array.shape)
                    offset += array.nbytes
        finally:
            if pool is not None:
                pool.shutdown()
        self._spill.flush()
        self._map = np.memmap(self._spill, dtype=np.uint8, mode="r") if offset else None
        self.ram_bytes, self.disk_bytes = used, offset
        log.info("Decoded %d images: %.0f MB in RAM, %.0f MB memory-mapped", len(paths), used / 1e6, offset / 1e6)

    def __len__(self) -> int:
        return len(self._ram)

    def __getitem__(self, index: int) -> np.ndarray:
        array = self._ram[index]
        if array is not None:
            return array
        offset, shape = self._spilled[index]
        return self._map[offset : offset + math.prod(shape)].reshape(shape)


# train.augment: torchvision's policies on uint8 images (timm's rand-m9 and Ultralytics' default is RandAugment).
AUGMENT = {
    "none": lambda: [],
    "randaugment": lambda: [v2.RandAugment(num_ops=2, magnitude=9)],
    "trivialaugment": lambda: [v2.TrivialAugmentWide()],
}


def transform(cfg: DataConfig, training: bool, normalize: bool = True) -> v2.Compose:
    """uint8 CHW in, float out. Training: random resized crop and flip, then `cfg.augment`'s policy (RandAugment
    with 2 operations at magnitude 9, or TrivialAugment). Evaluation: resize the short side, then center crop.
    With `normalize=False` the floats stay raw pixel values 0-255 (what an exported model takes).

    Normalizing image by image stays in the CPU cache; on a whole batch it measured 7x slower.
    """
    if training:
        # Bilinear for the random crops (as timm's training default), the model's own mode for evaluation.
        steps = [
            v2.RandomResizedCrop(
                cfg.image_size,
                scale=(cfg.crop_scale_min, 1.0),
                interpolation=InterpolationMode.BILINEAR,
                antialias=True,
            ),
            v2.RandomHorizontalFlip(),
            *AUGMENT[cfg.augment](),
        ]
    else:
        mode = InterpolationMode.BILINEAR if cfg.interpolation == "bilinear" else InterpolationMode.BICUBIC
        steps = [v2.Resize(cfg.resize_size, interpolation=mode, antialias=True), v2.CenterCrop(cfg.image_size)]
    if not normalize:
        return v2.Compose([*steps, v2.ToDtype(torch.float32, scale=False)])
    return v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True), v2.Normalize(cfg.mean, cfg.std)])


def prepared(path: str | Path, tf: v2.Compose) -> torch.Tensor:
    """One image file (EXIF-oriented RGB) through the transform `tf`: a [3, H, W] float tensor."""
    from components.data.images import load_rgb

    return tf(torch.from_numpy(np.array(load_rgb(path))).permute(2, 0, 1))


def batch_mixer(mixup_alpha: float, cutmix_alpha: float, num_classes: int) -> Callable | None:
    """train.mixup_alpha and train.cutmix_alpha: MixUp or CutMix on each training batch (one of the two,
    at random, when both are set, as timm's mixup switch), which turns the labels into class probabilities.
    None when both are 0."""
    mixers = [
        mixer(alpha=alpha, num_classes=num_classes)
        for mixer, alpha in ((v2.MixUp, mixup_alpha), (v2.CutMix, cutmix_alpha))
        if alpha > 0
    ]
    return v2.RandomChoice(mixers) if mixers else None


def model_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch on `device` in channels_last, the faster layout for these convolutional models."""
    return images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)


class ClsImages(Dataset):
    def __init__(self, store: ImageStore, labels: Sequence[int], tf: v2.Compose) -> None:
        if len(store) != len(labels):
            raise DatasetError(f"{len(store)} images but {len(labels)} labels")
        self.store, self.labels, self.tf = store, list(labels), tf

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(np.array(self.store[index])).permute(2, 0, 1)  # a writable copy
        return self.tf(image), self.labels[index]


def split_images(root: Path, cfg: DataConfig, cache_mb: int, workers: int = 0) -> dict[str, ClsImages]:
    """Train and val datasets for a ClsDataset folder, each image decoded once."""
    samples = {split: read_split(root, split) for split in SPLITS}
    everything = samples["train"] + samples["val"]
    store = ImageStore([s.path for s in everything], cache_mb * 1024 * 1024, 2 * cfg.image_size, workers)
    n_train = len(samples["train"])
    return {
        "train": ClsImages(_Slice(store, 0, n_train), [s.label for s in samples["train"]], transform(cfg, True)),
        "val": ClsImages(
            _Slice(store, n_train, len(everything)), [s.label for s in samples["val"]], transform(cfg, False)
        ),
    }


class _Slice:
    """A view of part of an ImageStore."""

    def __init__(self, store: ImageStore, start: int, stop: int) -> None:
        self.store, self.start, self.stop = store, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: int) -> np.ndarray:
        return self.store[self.start + index]
