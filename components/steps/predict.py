"""predict: classify images with the exported ONNX model in-process (onnxruntime) or through Triton (gRPC).

PaddleX-like: `create_pipeline(config).predict(inputs)` yields one result per image, with `.print()`,
`.save_to_json(dir)` and `.save_to_img(dir)`; the JSON holds `input_path`, `class_ids`, `scores`,
`label_names` and `decision` (the top class, or `unsure` when its calibrated confidence is below that
class's threshold from evaluate). An input that cannot be read fails on its own (its result carries
`error`); the rest go on.
"""

from __future__ import annotations

import io
import json
import logging
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from components.core.config import ExportParams, Params, RegisterParams
from components.core.errors import InputError, ServiceError
from components.core.fsutil import atomic_write_json
from components.data.cls_dataset import IMAGE_EXTENSIONS
from components.model.contract import INPUT_NAME, LABELS_FILE, MODEL_FILE, OUTPUT_NAME, RESULT_FILE

log = logging.getLogger(__name__)

IMAGENET = "imagenet"
URL_TIMEOUT = 10


@dataclass
class PipelineConfig:
    """What `sortflow get-pipeline-config` writes; every key can be edited in the YAML file."""

    model_dir: str = ExportParams.output  # an export folder, `models:/<name>@<alias>`, or `imagenet`
    device: str = "cpu"  # in-process onnxruntime: cpu, gpu or gpu:N
    batch_size: int = 8
    topk: int = 5
    triton_url: str = ""  # host:port of Triton's gRPC endpoint; empty runs onnxruntime in-process
    triton_model: str = RegisterParams.model_name
    tracking_uri: str = ""  # the MLflow server of a `models:/` model_dir, as mlflow.tracking_uri

    @classmethod
    def load(cls, path: str | Path) -> PipelineConfig:
        data = yaml.safe_load(Path(path).read_text()) or {}
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InputError(f"{path}: unknown keys {sorted(unknown)}; valid keys: {sorted(known)}")
        return cls(**data)

    def save(self, path: str | Path) -> Path:
        from components.core.fsutil import atomic_write_text

        return atomic_write_text(path, yaml.safe_dump(asdict(self), sort_keys=False))


class Result(dict):
    """One image's prediction: input_path, class_ids, scores, label_names (and error, if it failed)."""

    def __init__(self, data: dict[str, Any], image: Any = None) -> None:
        super().__init__(data)
        self.image = image

    @property
    def ok(self) -> bool:
        return "error" not in self

    def _stem(self) -> str:
        return Path(str(self["input_path"]).split("?")[0]).stem or "image"

    def print(self) -> None:
        print(json.dumps({"res": dict(self)}, ensure_ascii=False, indent=2))

    def save_to_json(self, save_path: str | Path) -> Path:
        return atomic_write_json(Path(save_path) / f"{self._stem()}_res.json", dict(self))

    def save_to_img(self, save_path: str | Path) -> Path | None:
        from components.data.images import draw_lines

        if self.image is None or not self.ok:
            return None
        lines = [f"{name} {score:.3f}" for name, score in zip(self["label_names"], self["scores"], strict=True)]
        path = Path(save_path) / f"{self._stem()}_res.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        draw_lines(self.image, lines).save(path)
        return path


def _expand(inputs: Any) -> Iterator[Any]:
    """Files, folders (their images, sorted), URLs, arrays and PIL images; lists of any of these."""
    if isinstance(inputs, (str, Path)):
        text = str(inputs)
        if text.startswith(("http://", "https://")):
            yield text
        elif Path(text).is_dir():
            yield from sorted(str(p) for p in Path(text).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            yield text
    elif isinstance(inputs, Iterable) and not isinstance(inputs, np.ndarray):
        for item in inputs:
            yield from _expand(item)
    else:
        yield inputs


def _load(item: Any) -> tuple[str, Any]:
    """(name, upright RGB PIL image) for one input."""
    from PIL import Image, ImageOps

    if isinstance(item, np.ndarray):
        return "array", Image.fromarray(item.astype(np.uint8)).convert("RGB")
    if isinstance(item, Image.Image):
        return "image", item.convert("RGB")
    name = str(item)
    if name.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(name, timeout=URL_TIMEOUT) as response:
                data = response.read()
        except OSError as exc:
            raise InputError(f"cannot fetch {name}: {exc}") from exc
        with Image.open(io.BytesIO(data)) as image:
            return name, ImageOps.exif_transpose(image).convert("RGB")
    from components.data.images import load_rgb

    if not Path(name).is_file():
        raise InputError("file not found")
    return name, load_rgb(name)


class _LocalModel:
    def __init__(self, model_dir: Path, device: str) -> None:
        from components.integrations.mlflow_registry import EXTRA, REQUIRED, artifact_files
        from components.model.calibration import recorded_thresholds
        from components.model.onnx_session import onnx_session

        # An export folder holds the files side by side; a registry download keeps all but the model in extra_files/.
        files = artifact_files(model_dir) if (model_dir / EXTRA).is_dir() else {n: model_dir / n for n in REQUIRED}
        for name in REQUIRED:
            if not files[name].is_file():
                raise InputError(f"{model_dir}: no {name}; run `sortflow export` or pass another model")
        self.session = onnx_session(files[MODEL_FILE], device)
        self.labels = files[LABELS_FILE].read_text(encoding="utf-8").splitlines()
        exported = json.loads(files[RESULT_FILE].read_text())
        self.data_config = exported["data_config"]
        self.thresholds = recorded_thresholds(exported, self.labels)

    def classify(self, pixels: np.ndarray, topk: int) -> list[tuple[list[int], list[float], list[str]]]:
        probabilities = self.session.run([OUTPUT_NAME], {INPUT_NAME: pixels})[0]
        out = []
        for row in probabilities:
            ids = np.argsort(-row)[:topk].tolist()
            out.append((ids, [float(row[i]) for i in ids], [self.labels[i] for i in ids]))
        return out


class _TritonModel:
    """The published classifier over gRPC; labels come from Triton's classification extension."""

    def __init__(self, url: str, model: str) -> None:
        import tritonclient.grpc as grpcclient

        self.grpc, self.model = grpcclient, model
        self.client = grpcclient.InferenceServerClient(url)
        try:
            live = self.client.is_server_live(client_timeout=3)
        except Exception as exc:  # tritonclient raises its own error type for every connection failure
            raise ServiceError(
                f"no Triton server answers at {url} ({exc}); start one with `sortflow serve` "
                "or pass the right --triton HOST:PORT"
            ) from exc
        if not live or not self.client.is_model_ready(model, client_timeout=3):
            raise InputError(f"Triton at {url} does not serve a ready model {model!r}; run `sortflow publish`")
        from components.integrations.triton_config import parse_thresholds

        config = self.client.get_model_config(model, as_json=True)["config"]
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.thresholds = parse_thresholds(params)
        size = int(config["input"][0]["dims"][-1])
        resize = int(params["resize_size"])  # written by `sortflow publish`
        # Mean and std are inside the graph; only the resize and crop happen on the client.
        self.data_config = {
            "image_size": size,
            "crop_pct": size / resize,
            "mean": (0.0, 0.0, 0.0),
            "std": (1.0, 1.0, 1.0),
            "interpolation": params.get("interpolation", "bicubic"),
        }

    def classify(self, pixels: np.ndarray, topk: int) -> list[tuple[list[int], list[float], list[str]]]:
        inputs = [self.grpc.InferInput(INPUT_NAME, list(pixels.shape), "FP32")]
        inputs[0].set_data_from_numpy(pixels)
        outputs = [self.grpc.InferRequestedOutput(OUTPUT_NAME, class_count=topk)]
        response = self.client.infer(self.model, inputs, outputs=outputs, client_timeout=60)
        out = []
        for row in response.as_numpy(OUTPUT_NAME).reshape(len(pixels), -1):
            parts = [entry.decode().split(":", 2) for entry in row]  # "score:index:label"
            out.append(([int(p[1]) for p in parts], [float(p[0]) for p in parts], [p[2] for p in parts]))
        return out


class Pipeline:
    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        if config.triton_url:
            self.model: _LocalModel | _TritonModel = _TritonModel(config.triton_url, config.triton_model)
        else:
            self.model = _LocalModel(resolve_model_dir(config.model_dir, config.tracking_uri), config.device)
        from components.data.loader import DataConfig, transform

        cfg = self.model.data_config
        self.transform = transform(
            DataConfig(
                image_size=int(cfg["image_size"]),
                mean=tuple(cfg["mean"]),
                std=tuple(cfg["std"]),
                crop_pct=float(cfg["crop_pct"]),
                interpolation=cfg["interpolation"],
            ),
            training=False,
            normalize=False,
        )

    def _pixels(self, image: Any) -> np.ndarray:
        import torch

        return self.transform(torch.from_numpy(np.array(image)).permute(2, 0, 1)).numpy()

    def predict(self, inputs: Any) -> Iterator[Result]:
        batch: list[tuple[str, Any]] = []
        for item in _expand(inputs):
            try:
                batch.append(_load(item))
            except Exception as exc:  # one unreadable input must not stop the others
                yield Result(
                    {
                        "input_path": str(item) if isinstance(item, (str, Path)) else "image",
                        "class_ids": [],
                        "scores": [],
                        "label_names": [],
                        "error": str(exc),
                    }
                )
                continue
            if len(batch) == self.config.batch_size:
                yield from self._run(batch)
                batch = []
        if batch:
            yield from self._run(batch)

    def _run(self, batch: list[tuple[str, Any]]) -> Iterator[Result]:
        pixels = np.stack([self._pixels(image) for _, image in batch]).astype(np.float32)
        for (name, image), (ids, scores, labels) in zip(
            batch, self.model.classify(pixels, self.config.topk), strict=True
        ):
            decision = _decision(ids, scores, labels, self.model.thresholds)
            yield Result(
                {"input_path": name, "class_ids": ids, "scores": scores, "label_names": labels, "decision": decision},
                image,
            )


def _decision(ids: list[int], scores: list[float], labels: list[str], thresholds: list[float]) -> str:
    """The top class's name, or `unsure` when its confidence is below the class's threshold."""
    from components.model.calibration import UNSURE

    if not ids:
        return UNSURE
    return labels[0] if not thresholds or scores[0] >= thresholds[ids[0]] else UNSURE


def resolve_model_dir(model: str, tracking: str = "") -> Path:
    """An export folder; `models:/name@alias` or `models:/name/version` (from the registry at `tracking`, as
    mlflow.tracking_uri: empty is $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db); or `imagenet`."""
    if model == IMAGENET:
        return imagenet_model_dir()
    if model.startswith("models:/"):
        from components.core.config import MlflowParams
        from components.integrations.mlflow_registry import registry_model_dir
        from components.integrations.mlflow_tracking import tracking_uri

        uri = tracking_uri(MlflowParams(tracking_uri=tracking))
        return registry_model_dir(model, uri, Path.home() / ".cache" / "sortflow" / "registry")
    return Path(model)


def imagenet_model_dir() -> Path:
    """EfficientNet-Lite0 with its offline ImageNet weights, exported once to ~/.cache/sortflow."""
    out = Path.home() / ".cache" / "sortflow" / "efficientnet-lite0-imagenet"
    if (out / RESULT_FILE).is_file():
        return out
    import timm

    from components.core.fsutil import staged_dir
    from components.model.deployable import Deployable, export_onnx
    from components.model.zoo import create_model, get_spec

    spec = get_spec("EfficientNet-Lite0")
    timm_cfg = spec.timm_cfg()
    data_config = {
        "image_size": spec.input_size,
        "mean": list(timm_cfg.mean),
        "std": list(timm_cfg.std),
        "crop_pct": float(timm_cfg.crop_pct),
        "interpolation": timm_cfg.interpolation,
    }
    model = Deployable(create_model(spec, 1000, "imagenet"), tuple(timm_cfg.mean), tuple(timm_cfg.std)).eval()
    info = timm.data.ImageNetInfo()
    labels = [info.index_to_description(i).replace(":", " ") for i in range(1000)]
    log.info("Exporting %s with ImageNet weights to %s (once)", spec.name, out)
    with staged_dir(out, replace=True) as stage:
        export_onnx(model, spec.input_size, stage / MODEL_FILE)
        (stage / LABELS_FILE).write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
        atomic_write_json(stage / RESULT_FILE, {"model_name": spec.name, "data_config": data_config, "labels": labels})
    return out


def create_pipeline(config: str | Path | PipelineConfig | None = None, **overrides: Any) -> Pipeline:
    """A pipeline from a YAML file (`sortflow get-pipeline-config`), a PipelineConfig, or the defaults."""
    if isinstance(config, PipelineConfig):
        cfg = config
    elif config is None:
        cfg = PipelineConfig()
    else:
        cfg = PipelineConfig.load(config)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return Pipeline(cfg)


def params_config(params: Params) -> PipelineConfig:
    """The pipeline of the project's parameters: its exported model, registered name and MLflow server."""
    return PipelineConfig(
        model_dir=params.export.output, triton_model=params.register.model_name, tracking_uri=params.mlflow.tracking_uri
    )


def command_config(
    params: Params, config: str | None = None, model: str | None = None, topk: int = 0, triton: str | None = None
) -> PipelineConfig:
    """What `sortflow predict` runs: `config` (a pipeline.yaml) or the exported model of `export.output`, with
    `model`, `topk` and `triton` on top. With none of config, model and triton, and nothing exported yet, it
    falls back to EfficientNet-Lite0 with its offline ImageNet weights (the quick start)."""
    cfg = PipelineConfig.load(config) if config else params_config(params)
    if model:
        cfg.model_dir = model
    elif not config and not triton and not (Path(cfg.model_dir) / MODEL_FILE).is_file():
        log.info("No model in %s: using ImageNet EfficientNet-Lite0", cfg.model_dir)
        cfg.model_dir = IMAGENET
    if topk:
        cfg.topk = topk
    if triton:
        cfg.triton_url = triton
    return cfg
