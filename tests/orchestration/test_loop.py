"""The loop from served traffic back to training, for real: a Triton server capturing requests, the monitor,
the review queue in a browser, labels back into the DVC-tracked dataset, and a retraining that only happens
when the data changed, served without a restart."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image, ImageEnhance

from tests.support.helpers import free_port
from tests.support.project import MODEL, project_copy
from tests.support.services import command_env, sh

# Capture every request; a window of 20 requests is enough for these tiny tests; every new version is promoted.
# One decoding instance: each instance refreshes its capture counters on the metrics port when it serves a
# request (at most every 0.25 s), so with two an idle one may show a count up to 0.25 s old, and the exact
# count below would depend on which instance served the last request.
LOOP = (
    "publish.capture_rate=1",
    "monitor.min_samples=20",
    "register.min_improvement=-1",
    "review.size=40",
    "publish.decode_instances=1",
)
REPEAT = 5  # each val image is sent this many times
PAUSE = 20  # seconds between ordinary and shifted traffic: more than a flow run takes to start on a loaded CI machine


def browser() -> str:
    found = shutil.which("chromium-headless-shell") or shutil.which("chromium")
    assert found, "headless Chromium is missing: `make test` installs it (apt-get install chromium-headless-shell)"
    return found


def send(http_port: int, files: list[bytes]) -> None:
    """Each encoded file to the bytes endpoint, one request each, as a camera would."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
    for data in files:
        tensor = httpclient.InferInput("image_bytes", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[data]], dtype=object))
        client.infer(f"{MODEL}_bytes", [tensor])


def darker(path: Path) -> bytes:
    buffer = io.BytesIO()
    ImageEnhance.Brightness(Image.open(path).convert("RGB")).enhance(0.35).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def monitor(project: Path, *extra: str) -> tuple[int, str, dict]:
    run = subprocess.run(
        [str(Path(sys.executable).parent / "sortflow"), "monitor", *extra],
        cwd=project,
        env=command_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    return (
        run.returncode,
        run.stdout + run.stderr,
        json.loads((project / "output/monitor/monitor_result.json").read_text()),
    )


def window_after(ordinary_end: float) -> str:
    """A window that reaches back to just after the ordinary traffic ended. The command computes its window
    when it runs, seconds later for a flow run (Prefect's start-up), so the window also holds the shifted
    traffic while that delay stays below the pause between the two."""
    return f"monitor.window_hours={(time.time() - ordinary_end - 1) / 3600:.6f}"


def drift_event(api: str, timeout: float = 30) -> dict:
    """The newest `sortflow.monitor.drift` event on the Prefect server (events are stored asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        query = {"filter": {"event": {"name": ["sortflow.monitor.drift"]}}, "limit": 10}
        events = httpx.post(f"{api}/events/filter", json=query, timeout=10).json()["events"]
        if events:
            return events[-1]
        assert time.monotonic() < deadline, "no sortflow.monitor.drift event"
        time.sleep(1)


def check_contact_sheet(sheet: Path, images: int, tmp_path: Path) -> None:
    """Open the contact sheet in headless Chromium: a screenshot, and every thumbnail and heatmap loaded."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,900"]
    shot = tmp_path / "sheet.png"
    subprocess.run([browser(), *flags, f"--screenshot={shot}", sheet.as_uri()], capture_output=True, timeout=120)
    with Image.open(shot) as image:
        assert image.size == (1200, 900) and len(image.convert("RGB").getcolors(1 << 20)) > 50  # not a blank page
    dom = subprocess.run(
        [browser(), *flags, "--dump-dom", sheet.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    assert f'data-thumbnails="{images}"' in dom and f'data-heatmaps="{images}"' in dom, dom[-2000:]


def val_images(project: Path) -> dict[Path, str]:
    """The split's val images, in its order, each with its true class."""
    labels = (project / "output/split/label.txt").read_text().split()[1::2]
    lines = (project / "output/split/val.txt").read_text().splitlines()
    return {project / "output/split" / line.rsplit(" ", 1)[0]: labels[int(line.rsplit(" ", 1)[1])] for line in lines}


def ordinary_traffic_shows_no_drift(project: Path, http_port: int, val: list[Path]) -> None:
    """The val images themselves, as traffic: every request captured, and the monitor finds no drift."""
    send(http_port, [p.read_bytes() for p in val] * REPEAT)
    time.sleep(0.5)  # the capture counters on the metrics port are refreshed by a request, at most every 0.25 s
    send(http_port, [val[0].read_bytes()])
    code, printed, result = monitor(project)
    assert code == 0, printed
    sent = len(val) * REPEAT + 1
    assert result["verdict"] == "no drift" and result["window"]["samples"] == sent
    assert {"embedding drift", "novel images share"} <= {c["check"] for c in result["checks"]}
    assert result["triton"]["sortflow_capture_samples_total"][f"{MODEL}:captured"] >= sent - 1


def darker_traffic_drifts(
    project: Path, http_port: int, val: list[Path], prefect_server: str
) -> tuple[float, dict[Path, bytes]]:
    """Darker photos (a new camera): `monitor` exits 3 and its brightness test says so; the `monitor` flow
    says drift too, with a report, a Prefect event and the review queue. Returns when the ordinary traffic
    ended, and the darker photo sent for each val image."""
    ordinary_end = time.time()
    time.sleep(PAUSE)
    shifted = {p: darker(p) for p in val}
    send(http_port, list(shifted.values()) * REPEAT)
    code, printed, result = monitor(project, "-o", window_after(ordinary_end))
    assert code == 3, printed
    assert "drift in" in result["verdict"]
    assert next(c for c in result["checks"] if c["check"] == "brightness")["drift"]
    assert (project / "output/monitor/monitor.png").is_file()
    assert (project / "output/monitor/data_docs/index.html").is_file()

    flow = sh(["sortflow", "run", "monitor", "-o", window_after(ordinary_end)], project, PREFECT_API_URL=prefect_server)
    assert "Completed('drift in" in flow and '"drift": true' in flow
    event = drift_event(prefect_server)
    assert event["resource"]["prefect.resource.id"] == f"sortflow.model.{MODEL}"
    assert (project / event["payload"]["review_queue"]).is_file()  # the flow built the queue to label
    report = httpx.post(f"{prefect_server}/artifacts/filter", json={"artifacts": {"key": {"any_": ["monitor"]}}})
    assert "brightness" in report.json()[-1]["data"]
    return ordinary_end, shifted


def label_the_review_queue(
    project: Path, ordinary_end: float, shifted: dict[Path, bytes], truth: dict[Path, str], tmp_path: Path
) -> None:
    """The review queue holds each shifted image once, in a contact sheet that a browser shows; a person labels
    them (here: the ground truth, found by the image's hash), and they become a new data version."""
    sh(["sortflow", "review", "-o", window_after(ordinary_end)], project)
    queue = project / "output/review/review.csv"
    rows = list(csv.DictReader(queue.open()))
    assert len(rows) == len(truth) and all(r["label"] == "" for r in rows)
    check_contact_sheet(project / "output/review/index.html", len(truth), tmp_path)
    tasks = json.loads((project / "output/review/label_studio_tasks.json").read_text())
    assert len(tasks) == len(truth) and tasks[0]["predictions"][0]["result"][0]["value"]["choices"]

    by_hash = {hashlib.blake2b(data, digest_size=16).hexdigest(): truth[path] for path, data in shifted.items()}
    for row in rows:
        row["label"] = by_hash[Path(row["file"]).stem]
    with queue.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    before = yaml.safe_load((project / "data.dvc").read_text())["outs"][0]["md5"]
    added = sh(["sortflow", "dataset", "add-reviewed", str(queue)], project)
    assert f"Added {len(rows)} reviewed images" in added
    assert yaml.safe_load((project / "data.dvc").read_text())["outs"][0]["md5"] != before


def retrained_version_is_served(project: Path, http_port: int, image: Path, prefect_server: str) -> None:
    """The data changed: the pipeline trains, registers and publishes version 2, which the running server loads
    and answers with; a run on unchanged data then ends at once."""
    second = sh(["sortflow", "run"], project, PREFECT_API_URL=prefect_server)
    assert "changed since champion version 1 was trained" in second
    assert json.loads((project / "output/register/register_result.json").read_text())["version"] == 2
    ready = f"http://127.0.0.1:{http_port}/v2/models/{MODEL}/versions/2/ready"
    assert urllib.request.urlopen(ready, timeout=10).status == 200
    send(http_port, [image.read_bytes()])
    time.sleep(1)
    record = json.loads(sorted((project / "output/capture/records").glob("*.jsonl"))[-1].read_text().splitlines()[-1])
    assert record["version"] == "2"

    began = time.monotonic()
    third = sh(["sortflow", "run"], project, PREFECT_API_URL=prefect_server)
    assert "nothing new to train on" in third and time.monotonic() - began < 60
    assert json.loads((project / "output/register/register_result.json").read_text())["version"] == 2


@pytest.mark.slow
def test_loop_from_served_traffic_back_to_training(tmp_path: Path, prefect_server: str) -> None:
    ports = {key: free_port() for key in ("grpc_port", "http_port", "metrics_port")}
    project = project_copy(tmp_path / "project", *LOOP, *(f"serve.{k}={v}" for k, v in ports.items()))
    first = sh(["sortflow", "run"], project, PREFECT_API_URL=prefect_server)
    assert "has no champion yet: training" in first
    truth = val_images(project)
    val = list(truth)
    sh(["sortflow", "serve"], project)
    try:
        ordinary_traffic_shows_no_drift(project, ports["http_port"], val)
        ordinary_end, shifted = darker_traffic_drifts(project, ports["http_port"], val, prefect_server)
        label_the_review_queue(project, ordinary_end, shifted, truth, tmp_path)
        retrained_version_is_served(project, ports["http_port"], val[0], prefect_server)
    finally:
        sh(["sortflow", "serve", "--stop"], project, check=False)
