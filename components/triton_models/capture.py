"""Traffic capture for the encoded-image endpoint: sampled requests written to a bounded folder, off the request path.

Layout of the capture folder (`publish.capture_dir`):
    images/<sha[:2]>/<sha>.<ext>    each distinct image file once (sha: BLAKE2b-128 of its bytes)
    records/<YYYYMMDD-HH>.jsonl     one JSON line per sampled request (UTC hour of the request)

A record: time (Unix seconds), model, version, sha, ext, bytes, decoded (false: the image did not decode,
with its error) and top: [[class index, probability], ...] (the five highest, best first). Where the
version has an embedder, also embedding (its `export.embedding_dim` numbers as float16, base64: 1,368
characters at 512) and novelty (its novelty score, `novelty.py`). A request that a shadow run also
classified (`sortflow shadow`) is always captured, with shadow: {version, top}.

The model samples (`chosen`) and submits; the request thread only queues; a background thread hashes and
writes, and describes what the model saw (`describe`: the embeddings and novelty scores of all the samples it
gathered at once, made from the model's features in one product each, off the request path). A full queue, a full
disk, a missing folder or any write error drops the sample and counts it; the first failure is logged.
Past `max_bytes` the least recently seen images go first, then the oldest record files. Imports only the
standard library, so it runs in any Triton python backend.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

IMAGES, RECORDS = "images", "records"
TOP_K = 5
QUEUE_SIZE = 512
BATCH = 256
GATHER_SECONDS = 0.05
TOUCH_SECONDS = 60  # a re-seen image's time of last use is refreshed at most this often
MAGIC = (
    (b"\xff\xd8\xff", "jpg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF8", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tif"),
    (b"MM\x00*", "tif"),
)


def sniff_ext(data: bytes) -> str:
    """The file extension for an encoded image, from its first bytes (WebP: RIFF....WEBP)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return next((ext for magic, ext in MAGIC if data.startswith(magic)), "bin")


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def image_path(root: Path, sha: str, ext: str) -> Path:
    return root / IMAGES / sha[:2] / f"{sha}.{ext}"


def record_file(root: Path, when: float) -> Path:
    return root / RECORDS / f"{time.strftime('%Y%m%d-%H', time.gmtime(when))}.jsonl"


def top_k(probabilities: list[float]) -> list[list[float]]:
    order = sorted(range(len(probabilities)), key=lambda i: -probabilities[i])[:TOP_K]
    return [[i, round(float(probabilities[i]), 6)] for i in order]


class Capture:
    """Samples requests at `rate` and writes them to `root` in a background thread."""

    def __init__(
        self,
        root: str,
        rate: float,
        max_bytes: int,
        model: str,
        version: str,
        shadow: bool = False,
        describe: Callable[[list[Any]], list[tuple[str, float]]] | None = None,
    ) -> None:
        self.root, self.rate, self.max_bytes = Path(root), rate, max_bytes
        self.model, self.version = model, version
        self.describe = describe  # features -> (encoded embedding, novelty score) each, for the records
        self.captured = self.dropped = 0
        self.failure: str | None = None  # the first failure, for the server log (read and cleared by the model)
        self._failed = False
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue(QUEUE_SIZE)
        self._used = None  # bytes in the folder, counted on the first write
        self._seen: dict[str, float] = {}  # sha -> when its file was last written or touched
        if rate > 0 or shadow:  # a shadow run's requests are captured whatever the rate
            try:
                (self.root / IMAGES).mkdir(parents=True, exist_ok=True)
                (self.root / RECORDS).mkdir(exist_ok=True)
            except OSError as exc:
                self._fail(exc)
            threading.Thread(target=self._run, name="sortflow-capture", daemon=True).start()

    def chosen(self) -> bool:
        """Whether to capture the next image: with probability `rate`."""
        return self.rate > 0 and random.random() < self.rate

    def submit(
        self,
        data: bytes,
        probabilities: list[float] | None,
        error: str | None = None,
        shadow: tuple[str, list[float]] | None = None,
        seen: Any = None,
    ) -> None:
        """Queue one chosen image (or one a shadow run classified) with its probabilities, or its decoding
        error, and what the model saw (`seen`: its features, for `describe`): never blocks, never raises."""
        try:
            self._queue.put_nowait((time.time(), data, probabilities, error, shadow, seen))
        except queue.Full:
            self._count("dropped")

    def _count(self, outcome: str) -> None:
        with self._lock:
            setattr(self, outcome, getattr(self, outcome) + 1)

    def _fail(self, exc: BaseException) -> None:
        self._count("dropped")
        if not self._failed:
            self._failed = True
            self.failure = f"sortflow capture: sample dropped ({exc}); later failures are counted, not logged"

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            time.sleep(GATHER_SECONDS)  # let samples gather: one wake-up and one append per batch, not per request
            while len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            records: dict[Path, list[str]] = {}
            for item, seen in zip(batch, self._described(batch), strict=True):
                try:
                    line = self._store(*item[:5], seen)
                    records.setdefault(record_file(self.root, item[0]), []).append(line)
                except Exception as exc:  # whatever went wrong, the sample goes and serving goes on
                    self._fail(exc)
            for path, lines in records.items():
                self._append(path, lines)

    def _described(self, batch: list[tuple]) -> list[tuple[str, float] | None]:
        """Per sample, what the model saw as its record holds it (None without an embedding): all of the batch
        described in one call. Should that fail, the samples are captured without it and the first failure is
        logged."""
        rows = [i for i, item in enumerate(batch) if item[5] is not None]
        out: list[tuple[str, float] | None] = [None] * len(batch)
        if not rows or self.describe is None:
            return out
        try:
            for i, described in zip(rows, self.describe([batch[i][5] for i in rows]), strict=True):
                out[i] = described
        except Exception as exc:  # what the model saw is for the monitor: never worth the sample
            if self.failure is None:
                self.failure = f"sortflow capture: what the model saw was not scored ({exc}); captured without it"
        return out

    def _store(
        self,
        when: float,
        data: bytes,
        probabilities: list[float] | None,
        error: str | None,
        shadow: tuple[str, list[float]] | None,
        seen: tuple[str, float] | None,
    ) -> str:
        """Write the image unless it is there (a recently seen one is not even looked up); its record line."""
        sha, ext = content_hash(data), sniff_ext(data)
        path = image_path(self.root, sha, ext)
        last = self._seen.get(sha)
        if last is None or when - last > TOUCH_SECONDS:
            if path.exists():
                os.utime(path)  # recently seen: evicted last
            else:
                path.parent.mkdir(exist_ok=True)  # not parents: a removed capture folder is not silently recreated
                tmp = path.with_name(f".{path.name}.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, path)
                self._grow(len(data))
            self._seen[sha] = when
        record = {"time": round(when, 3), "model": self.model, "version": self.version, "sha": sha, "ext": ext}
        record.update(bytes=len(data), decoded=error is None)
        record.update({"top": top_k(probabilities)} if probabilities is not None else {"error": error})
        if seen is not None:
            record.update(embedding=seen[0], novelty=round(float(seen[1]), 6))
        if shadow is not None:
            record["shadow"] = {"version": shadow[0], "top": top_k(shadow[1])}
        return json.dumps(record, separators=(",", ":")) + "\n"

    def _append(self, path: Path, lines: list[str]) -> None:
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write("".join(lines))
        except Exception as exc:
            for _ in lines:
                self._fail(exc)
            return
        for _ in lines:
            self._count("captured")
        self._grow(sum(map(len, lines)))

    def _grow(self, size: int) -> None:
        if self._used is None:
            self._used = sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())
        self._used += size
        if self._used > self.max_bytes:
            self._evict()

    def _evict(self) -> None:
        """Down to 90% of the budget: least recently seen images first, then the oldest record files."""
        target = int(self.max_bytes * 0.9)
        images = sorted((p.stat().st_mtime, p) for p in (self.root / IMAGES).rglob("*.*") if p.is_file())
        records = sorted((p.name, p) for p in (self.root / RECORDS).glob("*.jsonl"))
        for _, path in [*images, *records[:-1]]:  # the record file being written stays
            if self._used <= target:
                break
            size = path.stat().st_size
            path.unlink()
            self._seen.pop(path.stem, None)
            self._used -= size
