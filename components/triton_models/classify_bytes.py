"""Triton python-backend model `<model>_bytes`: encoded image files (JPEG/PNG bytes) in, class probabilities out.

Each file is decoded and resized as sortflow evaluates (`preprocess.py`), and the pixels of all the requests
of a dynamic batch are classified at once: by the classifier's ONNX file in this process (parameter
`inference` local, publish.bytes_inference) or by `<model>` in one BLS call (`classifier`). With capture
on, the requests are sampled into the capture folder (`capture.py`): the bytes, the served version and
the top-k probabilities, or the decoding error. Beside the probabilities it answers `DECISION`, one per
image: the class name, or `unsure` when the (calibrated) confidence is below that class's threshold
(parameter `unsure_thresholds`, from evaluate). During a shadow run (`sortflow shadow`: parameters
`shadow_version` and `shadow_rate`) a sampled share of the requests is also classified by that registry
version's ONNX file, in this process; its answer goes only into the capture, never to the client. Its
parameters come from config.pbtxt.

Where the served version has an embedder (export writes `embedder.onnx`: the same model with its pooled
features as a second output), each captured request also records what the model saw: its embedding and
its novelty score against the training images (`novelty.py`, from `embeddings.npz` beside the model), both
made from the features by the capture's background thread. With `inference` local the embedder is the model
this process runs, so the features cost nothing more; with `classifier` the embedder runs here on the
captured images only. Neither changes what a client gets.

A request that is the client's mistake (an empty, undecodable or truncated file, an image above
`max_image_pixels`, a request above `max_request_mb`) answers INVALID_ARGUMENT (HTTP 400) with the reason;
only a failure of the classifier itself answers INTERNAL (500).
"""

from __future__ import annotations

import json
import random
import time
from functools import partial
from pathlib import Path

import numpy as np
from capture import Capture
from novelty import describe, load_reference
from preprocess import BadImage, preprocess

INPUT, PIXELS, OUTPUT, DECISION, EMBEDDING = "image_bytes", "image", "probabilities", "DECISION", "embedding"
EMBEDDER_FILE, EMBEDDINGS_FILE = "embedder.onnx", "embeddings.npz"  # export's files beside model.onnx
UNSURE = b"unsure"
PROBE = "sortflow_probe"  # a request parameter of `sortflow serve --status`'s health probes: never captured
REPORT_SECONDS = 0.25  # the capture counters on the metrics port are refreshed by requests at most this often


def _one_blas_thread() -> None:
    """numpy's BLAS in one thread in this process: the capture thread's products (projection, novelty score) run
    beside serving, and idle BLAS threads spin for a while after each call, taking the cores from onnxruntime."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # a Triton image without it: BLAS keeps its own threads
        return
    threadpool_limits(1, user_api="blas")


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils

        config = json.loads(args["model_config"])
        p = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.size, self.resize, self.interpolation = int(p["image_size"]), int(p["resize_size"]), p["interpolation"]
        self.classifier = p["classifier"]
        labels = (Path(args["model_repository"]) / "labels.txt").read_text(encoding="utf-8").splitlines()
        self.labels = np.array([label.encode() for label in labels], dtype=object)
        text = p.get("unsure_thresholds", "")
        self.thresholds = np.array([float(v) for v in text.split(",")]) if text else np.zeros(len(labels))
        self._open_models(Path(args["model_repository"]).parent / self.classifier / p["registry_version"], p)
        self.shadow_version, self.shadow_rate = p.get("shadow_version", ""), float(p.get("shadow_rate", "0"))
        self.shadow = None
        if self.shadow_version:
            from onnx_runner import open_session

            shadow_file = Path(args["model_repository"]).parent / self.classifier / self.shadow_version / "model.onnx"
            self.shadow = open_session(shadow_file, int(p.get("intra_op_thread_count", "0")))
        self.max_pixels = int(p.get("max_image_pixels", "0"))
        self.max_request_mb = float(p.get("max_request_mb", "inf"))
        self.capture = Capture(
            p.get("capture_dir", ""),
            float(p.get("capture_rate", "0")),
            int(float(p.get("capture_max_mb", "1024")) * 1024 * 1024),
            self.classifier,
            p.get("registry_version", ""),
            shadow=self.shadow is not None,
            describe=partial(describe, reference=self.reference) if self.reference is not None else None,
        )
        family = pb_utils.MetricFamily(
            name="sortflow_capture_samples_total",
            description="Requests sampled by sortflow's traffic capture, by outcome",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.family = family  # metrics must not outlive their family
        # One series per instance (publish.decode_instances): two instances with the same labels would share
        # one series, and each would overwrite the other's count. The monitor sums them.
        instance = args.get("model_instance_name", "")
        self.metrics = {
            outcome: family.Metric(labels={"model": self.classifier, "outcome": outcome, "instance": instance})
            for outcome in ("captured", "dropped")
        }
        self.reported = {"captured": 0, "dropped": 0}
        self.reported_at = 0.0

    def _open_models(self, version_dir: Path, p: dict[str, str]) -> None:
        """The sessions this process runs: the embedder where the version has one, the classifier's ONNX file
        with `inference` local; and what the capture scores the embedder's features against (`novelty.Reference`)."""
        from onnx_runner import open_session

        threads = int(p.get("intra_op_thread_count", "0"))
        has_embedder = (version_dir / EMBEDDER_FILE).is_file() and (version_dir / EMBEDDINGS_FILE).is_file()
        if has_embedder:
            _one_blas_thread()
        self.embedder = open_session(version_dir / EMBEDDER_FILE, threads) if has_embedder else None
        self.reference = load_reference(str(version_dir / EMBEDDINGS_FILE)) if has_embedder else None
        self.session = None
        if p.get("inference") == "local":
            self.session = self.embedder or open_session(version_dir / "model.onnx", threads)

    def _decode(self, encoded: np.ndarray) -> np.ndarray:
        """The pixels of one request's files; BadImage names the file (1-based) and what is wrong with it."""
        size_mb = sum(len(item[0]) for item in encoded) / 1e6
        if size_mb > self.max_request_mb:
            raise BadImage(
                f"the request holds {size_mb:.1f} MB of images, above publish.max_request_mb={self.max_request_mb:g}; "
                "send fewer or smaller images per request"
            )
        pixels = []
        for i, item in enumerate(encoded, 1):
            try:
                pixels.append(preprocess(bytes(item[0]), self.size, self.resize, self.interpolation, self.max_pixels))
            except BadImage as exc:
                raise BadImage(f"image {i} of {len(encoded)} in the request: {exc}") from None
        return np.stack(pixels)

    def _decide(self, probabilities: np.ndarray) -> np.ndarray:
        """[n, 1] BYTES: each row's class name, or `unsure` below its class's threshold."""
        top = probabilities.argmax(axis=1)
        sure = probabilities[np.arange(len(top)), top] >= self.thresholds[top]
        return np.where(sure, self.labels[top], UNSURE).astype(object).reshape(-1, 1)

    def _classify(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The probabilities, and the pooled features when the embedder is what ran."""
        if self.session is not None and self.session is self.embedder:
            probabilities, features = self.session.run([OUTPUT, EMBEDDING], {PIXELS: pixels})
            return probabilities, features
        if self.session is not None:
            return self.session.run([OUTPUT], {PIXELS: pixels})[0], None
        import triton_python_backend_utils as pb_utils

        request = pb_utils.InferenceRequest(
            model_name=self.classifier,
            requested_output_names=[OUTPUT],
            inputs=[pb_utils.Tensor(PIXELS, pixels.astype(np.float32))],
        )
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{self.classifier}: {response.error().message()}")
        return pb_utils.get_output_tensor_by_name(response, OUTPUT).as_numpy(), None

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        encoded = [pb_utils.get_input_tensor_by_name(r, INPUT).as_numpy() for r in requests]
        pixels: list[np.ndarray | None] = []
        errors: list[str | None] = []
        for batch in encoded:
            try:
                pixels.append(self._decode(batch))
                errors.append(None)
            except BadImage as exc:  # a file that is not an image fails its own request, not the server
                pixels.append(None)
                errors.append(str(exc))
        decoded = [p for p in pixels if p is not None]
        try:
            scores, pooled = self._classify(np.concatenate(decoded)) if decoded else (np.empty((0, 0)), None)
        except Exception as exc:  # the classifier failed: every request of the batch answers with its error
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))) for _ in requests]
        bounds = np.cumsum([len(p) for p in decoded])[:-1]
        probabilities = iter(np.split(scores, bounds))
        features = iter(np.split(pooled, bounds) if pooled is not None else [None] * len(decoded))
        shadowed = iter(self._shadow(requests, pixels))
        responses, captured = [], []
        for request, batch, error, image in zip(requests, encoded, errors, pixels, strict=True):
            capture = PROBE not in request.parameters()
            if error is not None:
                if capture and sum(len(item[0]) for item in batch) <= self.max_request_mb * 1e6:
                    for item in batch:  # an oversized request is not stored
                        if self.capture.chosen():
                            self.capture.submit(bytes(item[0]), None, error)
                responses.append(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(error, pb_utils.TritonError.INVALID_ARG))
                )
                continue
            out, shadow, seen = next(probabilities), next(shadowed), next(features)
            if capture:
                captured.append((batch, out, image, seen, shadow))
            outputs = [pb_utils.Tensor(OUTPUT, out), pb_utils.Tensor(DECISION, self._decide(out))]
            responses.append(pb_utils.InferenceResponse(outputs))
        self._capture(captured)
        self._report()
        return responses

    def _capture(self, requests: list[tuple]) -> None:
        """Submit the chosen images of the batch's requests (batch, probabilities, pixels, features or None,
        shadow's probabilities or None), all of a request that a shadow run classified, with what the model
        saw: its pooled features (the capture projects and scores them)."""
        chosen = [
            (r, i)
            for r, (batch, _, _, _, shadow) in enumerate(requests)
            for i in range(len(batch))
            if shadow is not None or self.capture.chosen()
        ]
        if not chosen:
            return
        try:
            seen = self._features(requests, chosen)
        except Exception as exc:  # what the model saw is for the monitor: never worth a client's answer
            self.capture.failure = f"sortflow capture: the embedding failed ({exc}); captured without it"
            seen = None
        for n, (r, i) in enumerate(chosen):
            batch, out, _, _, shadow = requests[r]
            second = (self.shadow_version, shadow[i].tolist()) if shadow is not None else None
            self.capture.submit(bytes(batch[i][0]), out[i].tolist(), shadow=second, seen=seen[n] if seen else None)

    def _features(self, requests: list[tuple], chosen: list[tuple[int, int]]) -> list[np.ndarray] | None:
        """Each chosen image's pooled features; None when the version has no embedder."""
        if requests[0][3] is not None:  # the embedder was the model that ran: its features are at hand
            return [requests[r][3][i] for r, i in chosen]
        if self.embedder is not None:  # the classifier ran elsewhere (BLS): the embedder runs on these only
            return list(self.embedder.run([EMBEDDING], {PIXELS: np.stack([requests[r][2][i] for r, i in chosen])})[0])
        return None

    def _shadow(self, requests: list, pixels: list) -> list:
        """For each decoded request, the shadow version's probabilities when it was sampled, else None (one
        onnxruntime call for all the sampled ones). A failure of the shadow model is logged, never answered."""
        decoded = [(r, p) for r, p in zip(requests, pixels, strict=True) if p is not None]
        if self.shadow is None:
            return [None] * len(decoded)
        chosen = [PROBE not in r.parameters() and random.random() < self.shadow_rate for r, _ in decoded]
        sampled = [p for (_, p), c in zip(decoded, chosen, strict=True) if c]
        if not sampled:
            return [None] * len(decoded)
        try:
            scores = self.shadow.run([OUTPUT], {PIXELS: np.concatenate(sampled)})[0]
        except Exception as exc:  # the shadow run must never cost a client its answer
            self.capture.failure = f"sortflow shadow: version {self.shadow_version} failed ({exc})"
            return [None] * len(decoded)
        parts = iter(np.split(scores, np.cumsum([len(p) for p in sampled])[:-1]))
        return [next(parts) if c else None for c in chosen]

    def _report(self) -> None:
        """Custom metrics on the metrics port, and the capture's first failure in the server log.

        Both from the request thread: the capture thread only counts (the backend's calls are not for threads).
        """
        import triton_python_backend_utils as pb_utils

        if self.capture.failure is not None:
            pb_utils.Logger.log_warn(self.capture.failure)
            self.capture.failure = None
        now = time.monotonic()
        if now - self.reported_at < REPORT_SECONDS:  # each update is a round trip to the server: not per request
            return
        self.reported_at = now
        for outcome in ("captured", "dropped"):
            now = getattr(self.capture, outcome)
            if now > self.reported[outcome]:
                self.metrics[outcome].increment(now - self.reported[outcome])
                self.reported[outcome] = now
