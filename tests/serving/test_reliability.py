"""What the server promises under failure, on a real Triton: client mistakes are client errors and the server
goes on, a rollout under load drops no request, promote and rollback change what is served, a supervised
server drains on SIGTERM, and a crashed server or a dead backend is reported and recovered."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.serving.conftest import Release
from tests.support.helpers import free_port, overrides, record_figure

MODEL, BYTES_MODEL = "sortflow-classifier", "sortflow-classifier_bytes"
LIMITS = ("publish.max_request_mb=1", "publish.max_image_pixels=4000000")


@pytest.fixture(scope="module")
def limited(release: Release) -> Release:
    """The release republished with small request limits, before the module's server starts."""
    release.args += overrides(*LIMITS)
    assert release.run("publish") == 0
    return release


def _jpeg(seed: int = 0, size: tuple[int, int] = (40, 30)) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG")
    return buffer.getvalue()


def _png(width: int, height: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


def _lying_png_header(width: int, height: int) -> bytes:
    """A small real PNG whose header claims `width` x `height`: it must be refused before it is decoded."""
    import struct

    data = bytearray(_png(8, 8))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def _send(port: int, model: str, name: str, data: np.ndarray, dtype: str) -> tuple[int, str]:
    """(HTTP status, message) of one request: 200 and "" when it classified."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    tensor = httpclient.InferInput(name, list(data.shape), dtype)
    tensor.set_data_from_numpy(data)
    try:
        client.infer(model, [tensor])
    except InferenceServerException as exc:
        return int(exc.status() or 0), exc.message()
    except Exception as exc:  # no answer at all (connection refused or reset): status 0
        return 0, f"{type(exc).__name__}: {exc}"
    return 200, ""


def _files(*items: bytes) -> np.ndarray:
    return np.array([[item] for item in items], dtype=object)


def _hostile_requests() -> list[tuple[str, str, str, np.ndarray, str, str]]:
    """(kind, model, input, data, datatype, what the message must say)."""
    good = _jpeg()
    pixels = np.zeros((1, 3, 32, 32), np.float32)
    return [
        ("empty file", BYTES_MODEL, "image_bytes", _files(b""), "BYTES", "empty file (0 bytes)"),
        ("random bytes", BYTES_MODEL, "image_bytes", _files(os.urandom(5000)), "BYTES", "not an image file"),
        ("truncated JPEG", BYTES_MODEL, "image_bytes", _files(good[: len(good) // 2]), "BYTES", "cannot decode"),
        ("truncated PNG", BYTES_MODEL, "image_bytes", _files(_png(300, 300)[:60]), "BYTES", "cannot decode"),
        ("huge dimensions", BYTES_MODEL, "image_bytes", _files(_png(3000, 2000)), "BYTES", "max_image_pixels"),
        (
            "header lying about size",
            BYTES_MODEL,
            "image_bytes",
            _files(_lying_png_header(5000, 5000)),
            "BYTES",
            "max_image_pixels",
        ),
        ("good and bad in one request", BYTES_MODEL, "image_bytes", _files(good, b"junk"), "BYTES", "image 2 of 2"),
        (
            "request over max_request_mb",
            BYTES_MODEL,
            "image_bytes",
            _files(*[good] * 2, os.urandom(1_100_000)),
            "BYTES",
            "max_request_mb=1",
        ),
        ("wrong shape (bytes)", BYTES_MODEL, "image_bytes", np.array([[good, good]], dtype=object), "BYTES", "shape"),
        ("NaN pixels", MODEL, "image", np.full_like(pixels, np.nan), "FP32", "NaN or infinite"),
        ("infinite pixels", MODEL, "image", np.where(pixels == 0, np.inf, pixels), "FP32", "NaN or infinite"),
        ("wrong shape (pixels)", MODEL, "image", np.zeros((1, 3, 5, 5), np.float32), "FP32", "shape"),
        ("wrong type (pixels)", MODEL, "image", np.zeros((1, 3, 32, 32), np.int32), "INT32", "data-type"),
    ]


def test_hostile_requests_are_client_errors_and_the_server_goes_on(limited: Release, server: dict) -> None:
    port = server["http_port"]
    handled = 0
    for kind, model, name, data, dtype, says in _hostile_requests():
        status, message = _send(port, model, name, data, dtype)
        assert status == 400 and says in message, (kind, status, message)
        assert _send(port, BYTES_MODEL, "image_bytes", _files(_jpeg(1)), "BYTES") == (200, ""), kind
        handled += 1
    record_figure(
        "hostile requests (13 kinds)",
        handled,
        notes="each HTTP 400 with its reason; a good request answered after each",
    )


def test_client_errors_are_invalid_argument_over_grpc(limited: Release, server: dict) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server['grpc_port']}")
    tensor = grpcclient.InferInput("image_bytes", [1, 1], "BYTES")
    tensor.set_data_from_numpy(_files(b"not an image"))
    with pytest.raises(InferenceServerException) as caught:
        client.infer(BYTES_MODEL, [tensor])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT" and "not an image file" in caught.value.message()


def _served_version(port: int) -> str:
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(f"127.0.0.1:{port}").get_model_metadata(MODEL)["versions"][0]


def _load(port: int, stop: threading.Event, outcomes: Counter, errors: list[str], deadline: float) -> None:
    """Send encoded and pixel requests until told to stop (bounded: 60 s and 5,000 requests per thread)."""
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 3, 32, 32)).astype(np.float32)
    for i in range(5000):
        if stop.is_set() or time.monotonic() > deadline:
            return
        if i % 2:
            status, message = _send(port, BYTES_MODEL, "image_bytes", _files(_jpeg(i % 7)), "BYTES")
        else:
            status, message = _send(port, MODEL, "image", pixels, "FP32")
        outcomes["ok" if status == 200 else "failed"] += 1
        if status != 200:
            errors.append(message)
        if status == 0:  # no server answers any more (it stopped): this thread is done
            return


@contextlib.contextmanager
def _under_load(port: int, seconds: float) -> Iterator[tuple[Counter, list[str]]]:
    """Four client threads send requests for as long as the block runs (at most `seconds`): their outcomes."""
    stop, outcomes, errors = threading.Event(), Counter(), []
    deadline = time.monotonic() + seconds
    threads = [threading.Thread(target=_load, args=(port, stop, outcomes, errors, deadline)) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        yield outcomes, errors
    finally:
        stop.set()
        for t in threads:
            t.join()


def _challenger(release: Release) -> int:
    """Register the release's export again, not promoted: its version number."""
    assert release.run("register", "-o", "register.min_improvement=1") == 0
    return json.loads((release.workdir / "output/register/register_result.json").read_text())["version"]


def test_promote_and_rollback_under_load_drop_no_request(limited: Release, server: dict) -> None:
    port = server["http_port"]
    version, champion = _challenger(limited), _served_version(port)
    with _under_load(port, 60) as (outcomes, errors):
        served = []
        for _ in range(2):
            assert limited.run("promote", str(version), "--reason", "rollout test", "--by", "tester") == 0
            served.append(_served_version(port))
            assert limited.run("rollback") == 0
            served.append(_served_version(port))
    assert served == [str(version), champion] * 2
    assert outcomes["failed"] == 0 and outcomes["ok"] > 100, (outcomes, errors[:3])
    record_figure(
        "rollout under load (4 threads, 4 promote/rollback + reload)",
        outcomes["ok"] + outcomes["failed"],
        failed=outcomes["failed"],
        notes="requests on 127.0.0.1 during the rollouts",
    )
    code = limited.run("history")
    assert code == 0


def test_shadow_runs_start_stop_and_promote_under_load_dropping_no_request(limited: Release, server: dict) -> None:
    """A registered version shadows the champion on half the requests to the bytes model: clients still get the
    champion's answers, the shadowed requests are captured with both answers (the capture itself is off), the
    monitor reports the agreement, and starting, stopping and promoting under load fail no request."""
    port = server["http_port"]
    version, champion = _challenger(limited), _served_version(port)
    probe = _files(_jpeg(3))
    before = _send(port, BYTES_MODEL, "image_bytes", probe, "BYTES")
    with _under_load(port, 90) as (outcomes, errors):
        assert limited.run("shadow", str(version), "-o", "serve.shadow_rate=0.5") == 0
        time.sleep(3)
        assert _send(port, BYTES_MODEL, "image_bytes", probe, "BYTES") == before  # the champion answers
        assert limited.run("shadow", "--stop") == 0
        assert limited.run("shadow", str(version), "-o", "serve.shadow_rate=0.5") == 0
        time.sleep(3)
        assert limited.run("promote", str(version), "--reason", "after its shadow run") == 0  # ends the shadow run
        promoted = _served_version(port)
        assert limited.run("rollback") == 0
    assert promoted == str(version) and _served_version(port) == champion
    assert outcomes["failed"] == 0 and outcomes["ok"] > 100, (outcomes, errors[:3])
    records = [
        json.loads(line)
        for path in (limited.workdir / "output/capture/records").glob("*.jsonl")
        for line in path.read_text().splitlines()
    ]
    shadowed = [r for r in records if r.get("shadow", {}).get("version") == str(version)]
    assert shadowed and all(r["version"] == champion and r["top"] for r in shadowed)
    assert len(shadowed) == len([r for r in records if r["version"] == champion])  # capture off: only those
    code = limited.run("monitor", "-o", "monitor.min_samples=5", "-o", "monitor.window_hours=1")
    assert code in (0, 3)
    watched = json.loads((limited.workdir / "output/monitor/monitor_result.json").read_text())["shadow"]
    assert watched["version"] == str(version) and watched["requests"] == len(shadowed)
    assert 0 <= watched["low"] <= watched["agreement"] <= watched["high"] <= 1
    record_figure(
        "shadow runs under load (4 threads, 2 starts, 1 stop, 1 promote, 1 rollback)",
        outcomes["ok"] + outcomes["failed"],
        failed=outcomes["failed"],
        notes=f"requests on 127.0.0.1; {len(shadowed)} shadowed requests captured with both answers",
    )


def test_history_records_who_when_and_why(limited: Release, server: dict) -> None:
    from components.core.config import load_params
    from components.steps.promote import history

    cwd = os.getcwd()
    os.chdir(limited.workdir)
    try:
        rows = history(load_params(None, limited.args[1::2])).changes
    finally:
        os.chdir(cwd)
    manual = [r for r in rows if r.by == "tester"]
    assert manual and manual[0].reason == "rollout test" and manual[0].at.endswith("+00:00")
    rollbacks = [r for r in rows if r.rollback]
    assert rollbacks and all(r.version == manual[0].previous for r in rollbacks)  # back to the one before


def _background(release: Release, workdir: str) -> list[str]:
    ports = [f"serve.{key}={free_port()}" for key in ("grpc_port", "http_port", "metrics_port")]
    return overrides(f"serve.workdir={workdir}", *ports)


def _state(release: Release, workdir: str) -> dict:
    return json.loads((release.workdir / workdir / "server.json").read_text())


def test_dead_backend_is_reported_unhealthy_and_reload_brings_it_back(
    limited: Release, server: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    stubs = subprocess.run(["pgrep", "-P", str(server["pid"]), "-f", f"/{MODEL}/"], capture_output=True, text=True)
    (stub,) = [int(p) for p in stubs.stdout.split()]
    os.kill(stub, signal.SIGKILL)
    capsys.readouterr()
    assert limited.run("serve", "--status") == 1
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["status"] == "unhealthy" and report["health"][MODEL].startswith("unhealthy: ")
    assert "Stub process" in report["health"][MODEL] and "sortflow serve --reload" in err
    assert limited.run("serve", "--reload") == 0
    capsys.readouterr()
    assert limited.run("serve", "--status") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "running" and set(report["health"].values()) == {"healthy"}
    from components.steps.serve import resident_memory

    deadline = time.monotonic() + 30
    while True:  # the instances that reload replaced end shortly after the new ones are ready
        processes = [p["process"] for p in resident_memory(server["pid"])]
        if processes.count(f"{MODEL}_bytes") == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert processes.count("tritonserver") == processes.count(MODEL) == 1
    assert processes.count(f"{MODEL}_bytes") == 2  # publish.decode_instances, by model
    assert report["memory"][0]["process"] == "tritonserver"
    assert all(0 < p["rss_mb"] < 2000 for p in report["memory"])


def test_crashed_server_is_reported_with_its_log_and_starts_again(
    limited: Release, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _background(limited, "output/serve-crash")
    limited = Release(limited.workdir, limited.dataset, [*limited.args, *args])  # its own ports and folder
    assert limited.run("serve") == 0
    pid = _state(limited, "output/serve-crash")["pid"]
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    capsys.readouterr()
    try:
        assert limited.run("serve", "--status") == 1
        out = capsys.readouterr().out
        assert f"(pid {pid}) has crashed" in out and "Started HTTPService" in out  # the tail of its log
        assert limited.run("serve") == 0  # over the stale state
        assert (limited.workdir / "output/serve-crash/tritonserver.crashed.log").is_file()
        assert limited.run("serve", "--status") == 0
    finally:
        assert limited.run("serve", "--stop") == 0


def test_foreground_server_drains_on_sigterm_and_exits_0(limited: Release) -> None:
    args = _background(limited, "output/serve-fg")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "sortflow"), "serve", "--foreground", *limited.serve_args(), *args],
        cwd=limited.workdir,
    )
    state_file = limited.workdir / "output/serve-fg/server.json"
    deadline = time.monotonic() + 120
    while not state_file.is_file() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    state = _state(limited, "output/serve-fg")
    stop, outcomes, errors = threading.Event(), Counter(), []
    threads = [
        threading.Thread(target=_load, args=(state["http_port"], stop, outcomes, errors, time.monotonic() + 30))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    while outcomes["ok"] < 40 and time.monotonic() < deadline:  # past the first requests' imports
        time.sleep(0.1)
    before = outcomes["ok"]
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0
    stop.set()
    for t in threads:
        t.join()
    assert before > 10 and outcomes["ok"] >= before
    # After the signal, a request is answered or refused as unavailable; none fails inside the server.
    assert all("500" not in e and "Stub" not in e for e in errors), errors[:3]
    assert not state_file.exists()
    with pytest.raises(OSError):
        os.kill(state["pid"], 0)  # Triton is gone too
    record_figure(
        "SIGTERM to a supervised server under load (4 threads)",
        outcomes["ok"] + outcomes["failed"],
        notes=f"exit 0; {outcomes['ok']} answered, {outcomes['failed']} refused once it had stopped, none broken",
    )
