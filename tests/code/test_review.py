"""The review queue's order, and `dataset add-reviewed` with good and bad review files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from tests.support.helpers import CLASSES, write_image

Run = Callable[..., tuple[int, str, str]]


def test_queue_puts_disagreements_the_unsure_and_the_novel_first_then_the_drift_drivers_each_image_once() -> None:
    from components.steps.review import review_queue

    live = pd.DataFrame(
        {
            "sha": ["a", "b", "c", "d", "a", "e"],
            "decoded": [True, True, True, True, True, False],
            "image_present": [True, True, True, False, True, True],
            "confidence": [0.9, 0.3, 0.8, 0.1, 0.9, None],
            "brightness": [40.0, 120.0, 200.0, 10.0, 40.0, None],
            "class_id": [0, 1, 0, 1, 0, None],
            "label": ["glass", "metal", "glass", "metal", "glass", None],
        }
    )
    profile = {"labels": ["glass", "metal"], "predicted": [0, 1] * 10, "confidence": [0.9] * 20}
    profile["stats"] = {"brightness": [190.0, 200.0, 210.0] * 5}
    queue = review_queue(live, profile, ["brightness"], size=10, low=0.5)
    # b is unsure; then a (brightness 40, far from 200) before c (200); d's image is gone, e did not decode.
    assert queue["sha"].tolist() == ["b", "a", "c"]
    assert review_queue(live, profile, [], size=2, low=0.5)["sha"].tolist() == ["b", "c"]
    # A shadow run disagreed on c and agreed on a: c is the image most worth labelling.
    live["shadow_class_id"] = [0, None, 1, None, 0, None]
    assert review_queue(live, profile, ["brightness"], size=10, low=0.5)["sha"].tolist() == ["c", "b", "a"]
    # a is novel (above the val images' 99th percentile): right after the unsure, before the drift drivers.
    live["novelty"] = [0.6, 0.1, 0.2, 0.9, 0.6, None]
    profile["embedding"] = {"novelty_p99": 0.5}
    queue = review_queue(live, profile, ["brightness"], size=10, low=0.5)
    assert queue["sha"].tolist() == ["c", "b", "a"] and queue["why"].tolist() == [
        "shadow disagrees",
        "confidence below 0.5",
        "novel",
    ]
    live["shadow_class_id"] = None
    why = review_queue(live, profile, [], size=10, low=0.5)["why"].tolist()
    assert why == ["confidence below 0.5", "novel", "confidence"]


def _review(folder: Path, rows: list[tuple[str, str]], seed: int = 500) -> Path:
    (folder / "images").mkdir(parents=True)
    lines = ["file,predicted,confidence,label"]
    for i, (name, label) in enumerate(rows):
        if not (folder / "images" / name).exists() and name != "gone.jpg":
            write_image(folder / "images" / name, seed + i)
        lines.append(f"images/{name},glass,0.4000,{label}")
    (folder / "review.csv").write_text("\n".join(lines) + "\n")
    return folder / "review.csv"


def test_add_reviewed_adds_new_images_and_counts_what_it_skips(run_cli: Run, dataset: Path, tmp_path: Path) -> None:
    queue = _review(
        tmp_path / "review", [("n1.jpg", "metal"), ("n2.jpg", ""), ("n3.jpg", "paper"), ("n1.jpg", "metal")]
    )
    existing = dataset / "images/glass/glass_0.jpg"
    (tmp_path / "review/images/known.jpg").write_bytes(existing.read_bytes())
    with queue.open("a") as f:
        f.write("images/known.jpg,glass,0.5,glass\n")
    train_before = (dataset / "train.txt").read_text().splitlines()
    holdout = "review.holdout=0"  # every reviewed image trains
    code, out, err = run_cli("dataset", "add-reviewed", str(queue), "-o", f"dataset.dir={dataset}", "-o", holdout)
    assert code == 0, err
    assert "Added 2 reviewed images" in out and "0 to production.txt" in out
    assert "skipped 1 already in it, 1 rows without a label and 1 repeated rows" in out
    added = (dataset / "train.txt").read_text().splitlines()[len(train_before) :]
    assert [line.rsplit(" ", 1)[1] for line in added] == [str(CLASSES.index("metal")), str(CLASSES.index("paper"))]
    assert all((dataset / line.rsplit(" ", 1)[0]).is_file() for line in added)
    assert json.loads(Path("output/check_dataset_result.json").read_text())["check_pass"]


def test_a_reviewed_image_already_in_the_dataset_under_another_label_is_relabelled(
    run_cli: Run, dataset: Path, tmp_path: Path
) -> None:
    """Its list line changes (no copy is added), the result says what changed, and the dataset is checked."""
    queue = _review(tmp_path / "review", [("n1.jpg", "metal")])
    (tmp_path / "review/images/known.jpg").write_bytes((dataset / "images/glass/glass_0.jpg").read_bytes())
    with queue.open("a") as f:
        f.write("images/known.jpg,glass,0.5,paper\n")  # glass_0 is listed as glass: a person says paper
    where = next(
        f"{name}:{n}"
        for name in ("train.txt", "val.txt")
        for n, line in enumerate((dataset / name).read_text().splitlines(), start=1)
        if line.startswith("images/glass/glass_0.jpg ")
    )
    files_before = sorted(p.name for p in dataset.rglob("*.jpg"))
    code, out, err = run_cli("dataset", "add-reviewed", str(queue), "-o", f"dataset.dir={dataset}", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["added"] == 1 and result["already_in_dataset"] == 1
    assert result["relabelled"] == [
        {"where": where, "path": "images/glass/glass_0.jpg", "old": "glass", "new": "paper"}
    ]
    name, n = where.split(":")
    assert (dataset / name).read_text().splitlines()[int(n) - 1] == f"images/glass/glass_0.jpg {CLASSES.index('paper')}"
    assert len(sorted(p.name for p in dataset.rglob("*.jpg"))) == len(files_before) + 1  # only n1's copy
    assert json.loads(Path("output/check_dataset_result.json").read_text())["check_pass"]


def test_a_seeded_share_of_reviewed_images_goes_to_production(run_cli: Run, dataset: Path, tmp_path: Path) -> None:
    """review.holdout of the new images go to production.txt (never trained on), the same ones for the same seed;
    check-dataset checks them like val: a production image that is also a train image fails, naming its line."""
    queue = _review(tmp_path / "review", [(f"n{i}.jpg", CLASSES[i % 3]) for i in range(10)])
    train_before = (dataset / "train.txt").read_text().splitlines()
    code, out, err = run_cli("dataset", "add-reviewed", str(queue), "-o", f"dataset.dir={dataset}", "--json")
    assert code == 0, err
    assert json.loads(out)["added"] == 10 and json.loads(out)["to_production"] == 3
    production = (dataset / "production.txt").read_text().splitlines()
    added = (dataset / "train.txt").read_text().splitlines()[len(train_before) :]
    assert len(production) == 3 and len(added) == 7 and not set(production) & set(added)
    checked = json.loads(Path("output/check_dataset_result.json").read_text())
    assert checked["check_pass"] and checked["attributes"]["production_samples"] == 3
    assert checked["attributes"]["train_samples"] == len(train_before) + 7

    with (dataset / "production.txt").open("a") as f:
        f.write(train_before[0] + "\n")  # an image the model trains on is no evidence of how it does on the line
    code, out, err = run_cli("check-dataset", "-o", f"dataset.dir={dataset}")
    assert code == 1 and "production.txt:4" in out + err and "train.txt:1" in out + err


def test_bad_review_files_are_clear_errors_that_change_nothing(run_cli: Run, dataset: Path, tmp_path: Path) -> None:
    from tests.support.helpers import snapshot

    before = snapshot(dataset)
    cases = {
        "unknown": (
            [("n1.jpg", "metal"), ("n2.jpg", "plastic")],
            "review.csv:3: unknown class 'plastic'; valid classes",
        ),
        "missing": ([("n1.jpg", "metal"), ("gone.jpg", "glass")], "review.csv:3: image "),
        "conflict": ([("n1.jpg", "metal"), ("n1.jpg", "glass")], "review.csv:3: n1.jpg was labelled 'metal' at "),
    }
    for name, (rows, message) in cases.items():
        queue = _review(tmp_path / name, rows)
        code, _, err = run_cli("dataset", "add-reviewed", str(queue), "-o", f"dataset.dir={dataset}")
        assert code == 2 and message in err, (name, err)
        assert "Traceback" not in err
    (tmp_path / "ls.json").write_text('[{"data": {"image": "x"}}]')
    code, _, err = run_cli("dataset", "add-reviewed", str(tmp_path / "ls.json"), "-o", f"dataset.dir={dataset}")
    assert code == 2 and "task 1 has no data.sortflow_file" in err
    assert snapshot(dataset) == before


def test_label_studio_export_is_read_like_the_csv(run_cli: Run, dataset: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ls"
    write_image(folder / "images/a.jpg", 900)
    write_image(folder / "images/b.jpg", 901)
    tasks = [
        {"data": {"sortflow_file": "images/a.jpg"}, "annotations": [{"result": [{"value": {"choices": ["paper"]}}]}]},
        {"data": {"sortflow_file": "images/b.jpg"}, "annotations": [{"was_cancelled": True, "result": []}]},
    ]
    (folder / "export.json").write_text(json.dumps(tasks))
    code, out, err = run_cli("dataset", "add-reviewed", str(folder / "export.json"), "-o", f"dataset.dir={dataset}")
    assert code == 0, err
    assert "Added 1 reviewed images" in out and "1 rows without a label" in out
