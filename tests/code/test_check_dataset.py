"""check-dataset on tiny datasets: PaddleX's outputs, and every bad input fails with file:line."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from components.core.config import DatasetParams
from components.data.manifest import build_manifest
from components.data.report import run_check
from tests.support.helpers import snapshot, write_image

Run = Callable[..., tuple[int, str, str]]


def check(run_cli: Run, root: Path, *overrides: str) -> tuple[int, str, str, dict]:
    code, out, err = run_cli("check-dataset", str(root), "-o", "dataset.num_workers=1", *overrides)
    result = json.loads(Path("output/check_dataset_result.json").read_text())
    return code, out, err, result


def failed(result: dict) -> dict[str, dict]:
    return {c["name"]: c for c in result["checks"] if not c["success"] and c["severity"] == "critical"}


def test_valid_dataset_passes_and_writes_paddlex_outputs(run_cli: Run, dataset: Path) -> None:
    before = snapshot(dataset)
    code, out, _, result = check(run_cli, dataset)
    assert code == 0
    assert "Check dataset passed !" in out
    assert result["done_flag"] is True and result["check_pass"] is True
    assert result["dataset_type"] == "ClsDataset" and result["show_type"] == "image"
    attrs = result["attributes"]
    assert attrs["num_classes"] == 3
    assert (attrs["train_samples"], attrs["val_samples"]) == (9, 6)
    assert len(attrs["train_sample_paths"]) == 9 and len(attrs["val_sample_paths"]) == 6
    for rel in attrs["train_sample_paths"] + attrs["val_sample_paths"]:
        assert Image.open(Path("output") / rel).width >= 224  # small images are enlarged to show the label
    assert result["analysis"] == {"histogram": "check_dataset/histogram.png"}
    report = Path("output/check_dataset")
    assert Image.open(report / "histogram.png").format == "PNG"
    assert (report / "data_docs" / "index.html").is_file()
    suites = json.loads((report / "expectation_suite.json").read_text())
    assert {s["name"] for s in suites} == {"sortflow_files", "sortflow_labels", "sortflow_images"}
    validations = json.loads((report / "validation_result.json").read_text())
    outcomes = [(r["expectation_config"]["severity"], r["success"]) for v in validations for r in v["results"]]
    assert len(outcomes) == len(result["checks"]) and ("critical", False) not in outcomes
    assert ("warning", False) in outcomes  # the 16 px images are below dataset.min_image_size
    assert snapshot(dataset) == before


def test_demo_sample_count_follows_params(run_cli: Run, dataset: Path) -> None:
    _, _, _, result = check(run_cli, dataset, "-o", "dataset.sample_num=2")
    assert len(result["attributes"]["train_sample_paths"]) == 2


def corrupt_list(root: Path, name: str, line: str) -> None:
    with open(root / name, "a") as f:
        f.write(line + "\n")


def zero_byte(root: Path) -> None:
    (root / "images/glass/glass_3.jpg").write_bytes(b"")


def truncated_jpeg(root: Path) -> None:
    path = root / "images/glass/glass_3.jpg"
    write_image(path, seed=77, size=64)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def text_as_jpeg(root: Path) -> None:
    (root / "images/glass/glass_3.jpg").write_text("this is not an image\n")


def same_image_in_both(root: Path) -> None:
    shutil.copy(root / "images/glass/glass_0.jpg", root / "images/glass/copy.jpg")  # glass_0 is in val
    corrupt_list(root, "train.txt", "images/glass/copy.jpg 0")


def class_without_train(root: Path) -> None:
    lines = (root / "train.txt").read_text().splitlines()
    (root / "train.txt").write_text("".join(f"{x}\n" for x in lines if not x.endswith(" 2")))


BAD_INPUTS = {
    "missing label.txt": (lambda r: (r / "label.txt").unlink(), "label.txt, train.txt and val.txt exist", "label.txt"),
    "missing train.txt": (lambda r: (r / "train.txt").unlink(), "label.txt, train.txt and val.txt exist", "train.txt"),
    "missing val.txt": (lambda r: (r / "val.txt").unlink(), "label.txt, train.txt and val.txt exist", "val.txt"),
    "empty list": (
        lambda r: (r / "val.txt").write_text(""),
        "label.txt, train.txt and val.txt are not empty",
        "val.txt",
    ),
    "one field": (
        lambda r: corrupt_list(r, "train.txt", "images/glass/glass_3.jpg"),
        "each list line is `path label` (two fields)",
        "train.txt:10",
    ),
    "non-integer label": (
        lambda r: corrupt_list(r, "train.txt", "images/glass/glass_3.jpg x"),
        "labels are integers",
        "train.txt:10",
    ),
    "label out of range": (
        lambda r: corrupt_list(r, "val.txt", "images/glass/new.jpg 3"),
        "every label is below num_classes and named in label.txt",
        "val.txt:7",
    ),
    "missing image": (
        lambda r: corrupt_list(r, "train.txt", "images/glass/nope.jpg 0"),
        "listed images exist",
        "train.txt:10",
    ),
    "zero-byte image": (zero_byte, "every image decodes fully", "train.txt:2"),
    "truncated jpeg": (truncated_jpeg, "every image decodes fully", "train.txt:2"),
    "text named .jpg": (text_as_jpeg, "every image decodes fully", "train.txt:2"),
    "path with ..": (
        lambda r: corrupt_list(r, "train.txt", "../outside.jpg 0"),
        "no path leaves the dataset root",
        "train.txt:10",
    ),
    "absolute path": (
        lambda r: corrupt_list(r, "train.txt", "/etc/passwd 0"),
        "no path leaves the dataset root",
        "train.txt:10",
    ),
    "duplicated line": (
        lambda r: corrupt_list(r, "train.txt", "images/glass/glass_3.jpg 0"),
        "no path is listed twice",
        "train.txt:10",
    ),
    "same image in train and val": (same_image_in_both, "no image content is in both train and val", "train.txt:10"),
    "class with no train image": (class_without_train, "every class has at least one train image", "label.txt:3"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_with_file_and_line(run_cli: Run, dataset: Path, case: str) -> None:
    mutate, check_name, where = BAD_INPUTS[case]
    mutate(dataset)
    before = snapshot(dataset)
    code, out, _, result = check(run_cli, dataset)
    assert code == 1
    assert result["check_pass"] is False and result["err_type"] == "CheckFailedError"
    fails = failed(result)
    assert check_name in fails, f"{case}: expected {check_name!r}, failed: {list(fails)}"
    assert any(e.startswith(where) for e in fails[check_name]["examples"]), fails[check_name]
    assert fails[check_name]["fix"]
    assert "Check dataset failed" in out and check_name in out and where in out
    assert snapshot(dataset) == before, "check-dataset must not modify the dataset"


def test_missing_dataset_folder_is_a_clear_error(run_cli: Run, tmp_path: Path) -> None:
    code, _, err = run_cli("check-dataset", str(tmp_path / "nope"))
    assert code == 2
    assert "nope: dataset folder not found" in err
    assert not Path("output").exists()


def test_label_index_problems(run_cli: Run, dataset: Path) -> None:
    (dataset / "label.txt").write_text("1 glass\n1 metal\nx paper\n4\n")
    code, _, _, result = check(run_cli, dataset)
    assert code == 1
    names = set(failed(result))
    assert {
        "label indices start at 0",
        "label indices are unique",
        "label indices in label.txt are integers",
        "each line of label.txt is `index name`",
        "label indices are contiguous (0 to N-1)",
    } <= names


def test_warnings_do_not_fail(run_cli: Run, dataset: Path) -> None:
    # A class with no val image, a small image and a grayscale one are reported, not failures.
    (dataset / "val.txt").write_text(
        "".join(f"{x}\n" for x in (dataset / "val.txt").read_text().splitlines() if not x.endswith(" 2"))
    )
    write_image(dataset / "images/glass/glass_4.jpg", seed=5, size=16, mode="L")
    shutil.copy(dataset / "images/glass/glass_3.jpg", dataset / "images/metal/also_glass.jpg")
    corrupt_list(dataset, "train.txt", "images/metal/also_glass.jpg 1")  # glass_3 is in train too: no leak
    code, out, _, result = check(run_cli, dataset, "-o", "dataset.min_image_size=20")
    assert code == 0 and "Check dataset passed !" in out
    warned = {c["name"] for c in result["checks"] if not c["success"]}
    assert "every class has at least one val image" in warned
    assert "images are 8-bit RGB" in warned
    conflict = next(c for c in result["checks"] if c["name"] == "no image content is listed under two labels")
    assert conflict["severity"] == "warning" and conflict["examples"][0].startswith("train.txt:")
    assert "images are at least 20 px on the short side (dataset.min_image_size)" in warned
    # Each warning says what was found and what follows from it.
    assert "warning: 1 class has no val image; add val images" in out
    assert "warning: 1 image is not 8-bit RGB (mode L); training converts them (e.g. train.txt:" in out
    assert "warning: 14 images are smaller than 20 px on the short side (16 px); training upscales them" in out
    assert "warning: 2 pictures are also filed under another class; keep the line with the right label" in out


def test_odd_image_modes_paths_with_spaces_and_backslashes(tmp_path: Path, dataset: Path) -> None:
    """Grayscale, RGBA, CMYK, palette and 16-bit images are accepted; `\\` and spaces in paths work."""
    import numpy as np

    lines = []
    for i, mode in enumerate(["L", "RGBA", "CMYK", "P", "I;16"]):
        rel = f"images/metal/odd {mode.replace(';', '')} {i}.png" if mode != "CMYK" else "images/metal/cmyk.jpg"
        if mode == "I;16":
            Image.fromarray(np.arange(256, dtype=np.uint16).reshape(16, 16) * 257).save(dataset / rel)
        else:
            write_image(dataset / rel, seed=500 + i, mode=mode)
        lines.append(f"{rel.replace('/', chr(92))} 1\n")
    with open(dataset / "train.txt", "a") as f:
        f.writelines(lines)
    report = run_check(DatasetParams(dir=str(dataset), output=str(tmp_path / "out"), num_workers=1))
    assert report.check_pass, report.result.get("err_msg")
    modes = next(c for c in report.checks if c.name == "images are 8-bit RGB")
    assert modes.unexpected_count == 5
    assert report.result["attributes"]["train_samples"] == 14


def test_manifest_uses_process_pool_and_matches_serial(dataset: Path) -> None:
    for i in range(80):  # enough rows for the pool path
        write_image(dataset / f"images/paper/extra_{i}.jpg", seed=2000 + i)
    with open(dataset / "train.txt", "a") as f:
        f.writelines(f"images/paper/extra_{i}.jpg 2\n" for i in range(80))
    serial = build_manifest(dataset, workers=1).images
    pooled = build_manifest(dataset, workers=2).images
    assert serial.equals(pooled)
    assert serial["readable"].eq(True).all() and serial["hash"].nunique() == len(serial)


def test_failed_check_replaces_previous_report(run_cli: Run, dataset: Path) -> None:
    assert check(run_cli, dataset)[0] == 0
    (dataset / "images/glass/glass_3.jpg").write_bytes(b"")
    code, _, _, result = check(run_cli, dataset)
    assert code == 1 and result["check_pass"] is False
    assert not list(Path("output").glob(".check_dataset.*")), "no staging folder is left behind"


def test_the_gate_only_reads_the_check_result_and_the_cli_checks_first(run_cli: Run, dataset: Path) -> None:
    """Steps that read a dataset pass a gate that reads check_dataset_result.json and nothing else: a missing or
    stale result names the command to run. `sortflow split` (and train) run the check first when needed."""
    import os

    from components.data.gate import NotChecked, passed_check

    params = DatasetParams(dir=str(dataset), output="output", num_workers=1)
    with pytest.raises(NotChecked, match=r"no check result newer than its lists .*run `sortflow check-dataset` first"):
        passed_check(params)
    code, _, _ = run_cli("split", str(dataset), "-o", "split.output=split", "-o", "dataset.num_workers=1")
    assert code == 0 and passed_check(params)["check_pass"]
    later = Path("output/check_dataset_result.json").stat().st_mtime + 10
    os.utime(dataset / "train.txt", (later, later))  # the lists changed after the check
    with pytest.raises(NotChecked):
        passed_check(params)
