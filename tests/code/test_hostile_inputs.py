"""A corpus of hostile datasets and parameters: each gives a clear error that names the file and line (or the
key), exits non-zero, and leaves the dataset as it was; nothing reads a huge file into memory."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.helpers import record_figure, snapshot, write_image

Run = Callable[..., tuple[int, str, str]]


def _append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


def _one_mb_line(root: Path) -> str:
    _append(root / "train.txt", "images/" + "a" * 1_000_000 + ".jpg 0\n")
    return "train.txt:10: a line of more than 4096 bytes"


def _one_gb_list(root: Path) -> str:
    with open(root / "train.txt", "r+b") as f:  # sparse: 1 GB on paper, nothing on disk
        f.seek(1 << 30)
        f.write(b"\n")
    return "train.txt:10: a line of more than 4096 bytes"


def _name_too_long(root: Path) -> str:
    _append(root / "train.txt", "images/" + "b" * 300 + ".jpg 0\n")
    return "listed images exist: 1 offending entries, e.g. train.txt:10"


def _control_characters(root: Path) -> str:
    (root / "label.txt").write_text("0 gl\x1bass\n1 metal\n2 paper\n")
    return "class names have no control characters and no ':': 1 offending entries, e.g. label.txt:1"


def _colon_in_label(root: Path) -> str:
    (root / "label.txt").write_text("0 glass\n1 metal:tin\n2 paper\n")
    return "e.g. label.txt:2"


def _thousands_of_classes(root: Path) -> str:
    (root / "label.txt").write_text("".join(f"{i} class{i}\n" for i in range(3000)))
    return "every class has at least one train image: 2997 offending entries"


def _text_named_jpg(root: Path) -> str:
    next((root / "images/glass").glob("*.jpg")).write_text("this is text, not a JPEG")
    return "every image decodes fully: 1 offending entries, e.g. "


def _escaping_path(root: Path) -> str:
    _append(root / "train.txt", "../outside.jpg 0\n")
    write_image(root.parent / "outside.jpg", 1)
    return "train.txt:10"


def _binary_list(root: Path) -> str:
    (root / "val.txt").write_bytes(bytes(b for b in range(256) if b not in b"\r\n\x0b\x0c\x1c\x1d\x1e\x85") * 40)
    return "val.txt:1: a line of more than 4096 bytes"


HOSTILE_DATASETS = {
    "a 1 MB line": _one_mb_line,
    "a 1 GB list": _one_gb_list,
    "a path name over 255 bytes": _name_too_long,
    "a label with control characters": _control_characters,
    "a label with ':'": _colon_in_label,
    "3,000 classes": _thousands_of_classes,
    "text named .jpg": _text_named_jpg,
    "a path leaving the root": _escaping_path,
    "a binary list file": _binary_list,
}


@pytest.mark.parametrize("kind", list(HOSTILE_DATASETS))
def test_hostile_dataset_fails_with_file_and_line(run_cli: Run, dataset: Path, kind: str) -> None:
    says = HOSTILE_DATASETS[kind](dataset)
    before = snapshot(dataset)
    began = time.monotonic()
    code, out, err = run_cli("check-dataset", str(dataset), "-o", "dataset.num_workers=1")
    assert code != 0 and says in out + err, (code, out[-2000:], err[-2000:])
    assert "Traceback" not in err
    assert time.monotonic() - began < 60
    assert snapshot(dataset) == before
    if Path("output/check_dataset_result.json").is_file():
        assert json.loads(Path("output/check_dataset_result.json").read_text())["check_pass"] is False
    record_figure(f"hostile dataset: {kind}", 1, notes="clear error with file:line")


HOSTILE_PARAMETERS = {
    "a wrong type": ("train:\n  epochs: five\n", "params.yaml:2: train.epochs: expected int, got 'five'"),
    "a misspelt key": (
        "train:\n  devcie: cpu\n",
        "params.yaml:2: unknown parameter 'train.devcie'. Did you mean train.device?",
    ),
    "a misspelt section": (
        "trian:\n  epochs: 3\n",
        "params.yaml:2: unknown parameter 'trian.epochs'. Did you mean train.epochs?",
    ),
    "a section that is not a mapping": ("train: [1, 2]\n", "params.yaml:1: section 'train' must be a mapping"),
    "malformed YAML": ("train:\n  epochs: [1\n", "params.yaml:3: not valid YAML"),
    "a value out of range": ("publish:\n  max_image_pixels: 0\n", "publish.max_image_pixels must be 1 or more"),
    "a folder that does not exist": ("dataset:\n  dir: /no/such/folder\n", "/no/such/folder: dataset folder not found"),
}


@pytest.mark.parametrize("kind", list(HOSTILE_PARAMETERS))
def test_hostile_parameters_are_named_with_their_line(run_cli: Run, kind: str) -> None:
    text, says = HOSTILE_PARAMETERS[kind]
    Path("params.yaml").write_text(text)
    code, _, err = run_cli("check-dataset")
    assert code == 2 and says in err and "Traceback" not in err, err
    record_figure(f"hostile parameter: {kind}", 1, notes="exit 2, the file:line or the key named")


def test_the_runners_nan_check_is_exact_also_when_the_sum_overflows() -> None:
    import numpy as np

    from components.triton_models.onnx_runner import finite

    pixels = np.full((1, 3, 8, 8), 128, np.float32)
    assert finite(pixels)
    assert finite(np.full_like(pixels, 3e38))  # the sum overflows to inf; every value is still finite
    for bad in (np.nan, np.inf, -np.inf):
        broken = pixels.copy()
        broken[0, 1, 2, 3] = bad
        assert not finite(broken)
