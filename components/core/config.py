"""Parameters: built-in defaults, then `params.yaml`, then `-o section.key=value` overrides.

The section and key names are the ones `dvc exp run -S section.key=value` uses, so one name works for
the CLI, DVC stages and Prefect flows alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from components.core.errors import ParamsError

DEFAULT_PARAMS_FILE = "params.yaml"


@dataclass
class DatasetParams:
    dir: str = "data"
    output: str = "output"
    sample_num: int = 10
    min_image_size: int = 32
    num_workers: int = 0
    link: bool = True


@dataclass
class SplitParams:
    enable: bool = False
    train_percent: int = 80
    val_percent: int = 20
    seed: int = 42
    output: str = ""


@dataclass
class TrainParams:
    model: str = "PP-LCNet_x1_0"
    pretrained: str = "none"
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 0.1
    image_size: int = 224
    device: str = "cpu"
    seed: int = 42
    output: str = "output/train"
    resume: bool = False
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 4e-5
    warmup_epochs: int = 1
    label_smoothing: float = 0.1
    num_classes: int = 0
    num_workers: int = 0
    cache_mb: int = 2048
    crop_scale_min: float = 0.08
    augment: str = "none"
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    clip_grad_norm: float = 2.0
    ema_decay: float = 0.9998


@dataclass
class EvaluateParams:
    weight_path: str = ""  # empty: best.pt in train.output
    output: str = "output/evaluate"
    batch_size: int = 64
    calibrate: bool = True
    target_precision: float = 0.95


@dataclass
class ExportParams:
    weight_path: str = ""  # empty: best.pt in train.output
    output: str = "output/export"
    parity_images: int = 64
    tolerance: float = 1e-4
    rtol: float = 1e-3
    quantize: bool = False
    embedding_dim: int = 512
    novelty_neighbours: int = 1


@dataclass
class RegisterParams:
    model_name: str = "sortflow-classifier"
    min_improvement: float = 0.0
    queue_timeout: float = 600.0
    output: str = "output/register"
    min_production: int = 50
    alpha: float = 0.05
    cost_matrix: str = ""  # empty: 1 for every error, unsure_cost for unsure
    unsure_cost: float = 0.2
    max_recall_drop: float = 0.05


@dataclass
class PublishParams:
    repo: str = "triton_repo"
    max_batch_size: int = 32
    instance_kind: str = "cpu"
    instances: int = 1
    threads: int = 1
    decode_instances: int = 2
    bytes_inference: str = "auto"
    max_queue_delay_us: int = 0
    capture_rate: float = 0.0
    capture_dir: str = "output/capture"
    capture_max_mb: int = 1024
    max_image_pixels: int = 40_000_000
    max_request_mb: float = 64.0


@dataclass
class ServeParams:
    host: str = "127.0.0.1"
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    workdir: str = "output/serve"
    shadow_rate: float = 0.2


@dataclass
class MonitorParams:
    window_hours: float = 24.0
    min_samples: int = 100
    alpha: float = 0.01
    low_confidence: float = 0.5
    max_undecodable_share: float = 0.01
    permutations: int = 5000
    output: str = "output/monitor"


@dataclass
class ReviewParams:
    size: int = 100
    output: str = "output/review"
    holdout: float = 0.3
    heatmaps: bool = True


@dataclass
class AuditParams:
    max_hamming: int = 4
    fail_on_leak: bool = False
    folds: int = 5
    output: str = "output/audit"


@dataclass
class MlflowParams:
    tracking_uri: str = ""
    experiment: str = "sortflow"


@dataclass
class DeployParams:
    training_cron: str = "0 2 * * *"
    data_check_cron: str = "0 * * * *"
    monitor_cron: str = "30 * * * *"
    timezone: str = "UTC"


@dataclass
class LocksParams:
    timeout: float = 3600.0


@dataclass
class Params:
    dataset: DatasetParams = field(default_factory=DatasetParams)
    split: SplitParams = field(default_factory=SplitParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    export: ExportParams = field(default_factory=ExportParams)
    register: RegisterParams = field(default_factory=RegisterParams)
    publish: PublishParams = field(default_factory=PublishParams)
    serve: ServeParams = field(default_factory=ServeParams)
    monitor: MonitorParams = field(default_factory=MonitorParams)
    review: ReviewParams = field(default_factory=ReviewParams)
    audit: AuditParams = field(default_factory=AuditParams)
    mlflow: MlflowParams = field(default_factory=MlflowParams)
    deploy: DeployParams = field(default_factory=DeployParams)
    locks: LocksParams = field(default_factory=LocksParams)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Every section as plain values, for reports and config.yaml: a password in a URI is masked."""
        values = dataclasses.asdict(self)
        values["mlflow"]["tracking_uri"] = redact_uri(values["mlflow"]["tracking_uri"])
        return values


def redact_uri(uri: str) -> str:
    """`uri` with the secret of its user part masked (http://user:secret@host -> http://user:***@host, and a
    lone token http://token@host -> http://***@host), for anything that is logged, written or shown."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    host = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:***" if parts.password is not None else "***"
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(Params)
    return {f.name: hints[f.name] for f in dataclasses.fields(Params)}


def valid_keys() -> list[str]:
    """Every `section.key` name, in declaration order."""
    return [f"{name}.{k.name}" for name, section in _section_types().items() for k in dataclasses.fields(section)]


def refuse_published_keys(overrides: list[str], command: str) -> None:
    """`sortflow serve` runs what `publish` wrote: an override of a key that only publish writes into the model
    configs (every publish.* key but repo), or that `sortflow shadow` writes (serve.shadow_rate), cannot take
    effect there, so it is an error naming the command that applies it rather than a setting silently
    ignored."""
    for override in overrides:
        key = override.partition("=")[0].strip()
        if key == "serve.shadow_rate":
            raise ParamsError(
                f"-o {override}: {key} takes effect when `sortflow shadow VERSION` starts a shadow run, not at "
                f"`sortflow {command}`; run `sortflow shadow VERSION -o {override}`"
            )
        if key.startswith("publish.") and key != "publish.repo" and key in valid_keys():
            raise ParamsError(
                f"-o {override}: {key} takes effect when `sortflow publish` writes the model configs, not at "
                f"`sortflow {command}`; run `sortflow publish -o {override}`, then `sortflow serve --reload` "
                "(or start the server)"
            )


def _coerce(value: Any, expected: type, where: str) -> Any:
    if expected is bool:
        if isinstance(value, bool):
            return value
    elif expected is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif expected is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # PyYAML reads `1e-4` (no dot) as text, though it is how learning rates are written.
        with contextlib.suppress(ValueError):
            if isinstance(value, str) and math.isfinite(number := float(value)):
                return number
    elif expected is str:
        # `-o train.device=0` or `model_name: 2024` parse as numbers in YAML; the key wants text.
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    raise ParamsError(f"{where}: expected {expected.__name__}, got {value!r} ({type(value).__name__})")


def _set(params: Params, key: str, value: Any, where: str) -> None:
    section, _, name = key.partition(".")
    sections = _section_types()
    hints = typing.get_type_hints(sections[section]) if section in sections else {}
    if name not in hints:
        import difflib

        keys = [k for k in valid_keys() if k.startswith(section + ".")] or valid_keys()
        close = difflib.get_close_matches(key, valid_keys(), n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        scope = f" in {section}" if section in sections else ""
        raise ParamsError(f"{where}: unknown parameter {key!r}.{hint} Valid keys{scope}: {', '.join(keys)}")
    setattr(getattr(params, section), name, _coerce(value, hints[name], f"{where}: {key}"))


@dataclass(frozen=True)
class Rule:
    """What a parameter may hold: the test, and the rule as the error and the reference state it."""

    allowed: Callable[[Any], bool]
    text: str


def _zone(name: str) -> bool:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _least(least: float, text: str = "") -> Rule:
    return Rule(lambda v: v >= least, text or f"{least:g} or more")


def _within(low: float, high: float, text: str) -> Rule:
    """low <= v < high."""
    return Rule(lambda v: low <= v < high, text)


def _one_of(*choices: str, text: str = "") -> Rule:
    return Rule(lambda v: v in choices, text or f"{', '.join(choices[:-1])} or {choices[-1]}")


_OPEN_UNIT = Rule(lambda v: 0 < v < 1, "between 0 and 1")
_CRON = Rule(lambda v: len(v.split()) == 5, "a cron expression (minute hour day month weekday)")

# Every parameter with a rule of its own; a key not listed takes any value of its type.
RULES: dict[str, Rule] = {
    "dataset.sample_num": _least(0),
    "dataset.min_image_size": _least(0),
    "dataset.num_workers": _least(0, "0 (one per CPU core) or more"),
    "split.train_percent": Rule(lambda v: 0 < v < 100, "between 0 and 100 (with val_percent: 100)"),
    "split.val_percent": Rule(lambda v: 0 < v < 100, "between 0 and 100 (with train_percent: 100)"),
    "train.epochs": _least(1),
    "train.batch_size": _least(1),
    "train.image_size": _least(1),
    "train.learning_rate": Rule(lambda v: v > 0, "above 0"),
    "train.optimizer": _one_of("sgd", "adamw"),
    "train.num_classes": _least(0, "0 (as label.txt) or more"),
    "train.num_workers": _least(0),
    "train.cache_mb": _least(0),
    "train.crop_scale_min": Rule(lambda v: 0 < v <= 1, "in (0, 1]"),
    "train.augment": _one_of("none", "randaugment", "trivialaugment"),
    "train.ema_decay": _within(0, 1, "in [0, 1) (0 = no weight average)"),
    "train.label_smoothing": _within(0, 1, "in [0, 1)"),
    "train.mixup_alpha": _least(0, "0 (off) or more"),
    "train.cutmix_alpha": _least(0, "0 (off) or more"),
    "train.clip_grad_norm": _least(0, "0 (off) or more"),
    "train.drop_rate": _within(0, 1, "in [0, 1) (0 = off)"),
    "train.drop_path_rate": _within(0, 1, "in [0, 1) (0 = off)"),
    "evaluate.batch_size": _least(1),
    "evaluate.target_precision": Rule(lambda v: 0 < v <= 1, "in (0, 1]"),
    "export.parity_images": _least(1),
    "export.embedding_dim": _least(2),
    "export.novelty_neighbours": _least(1),
    "export.tolerance": _least(0),
    "export.rtol": _least(0),
    "register.queue_timeout": _least(0, "0 or more (seconds)"),
    "register.min_production": _least(1),
    "register.alpha": _OPEN_UNIT,
    "register.unsure_cost": _least(0),
    "register.max_recall_drop": _within(0, 1, "in [0, 1)"),
    "publish.max_batch_size": _least(1),
    "publish.instance_kind": _one_of("cpu", "gpu", text="cpu or gpu (Triton's KIND_CPU or KIND_GPU)"),
    "publish.instances": _least(1),
    "publish.threads": _least(0),
    "publish.decode_instances": _least(1),
    "publish.bytes_inference": _one_of(
        "auto",
        "local",
        "classifier",
        text="auto, local (the ONNX file runs in each decoding instance) or classifier (<model>_bytes calls "
        "<model> through Triton)",
    ),
    "publish.max_queue_delay_us": _least(0),
    "publish.capture_rate": Rule(lambda v: 0 <= v <= 1, "in [0, 1] (0 = off, 1 = every request)"),
    "publish.capture_max_mb": _least(1),
    "publish.max_image_pixels": _least(1),
    "publish.max_request_mb": Rule(lambda v: v > 0, "above 0"),
    "serve.grpc_port": Rule(lambda v: 0 < v < 65536, "a TCP port, 1 to 65535"),
    "serve.shadow_rate": Rule(lambda v: 0 < v <= 1, "in (0, 1] (1 = every request)"),
    "serve.http_port": Rule(lambda v: 0 < v < 65536, "a TCP port, 1 to 65535"),
    "serve.metrics_port": Rule(lambda v: 0 < v < 65536, "a TCP port, 1 to 65535"),
    "monitor.window_hours": Rule(lambda v: v > 0, "above 0"),
    "monitor.min_samples": _least(1),
    "monitor.alpha": _OPEN_UNIT,
    "monitor.permutations": _least(99),
    "monitor.low_confidence": _OPEN_UNIT,
    "monitor.max_undecodable_share": _OPEN_UNIT,
    "review.size": _least(1),
    "audit.max_hamming": Rule(lambda v: 0 <= v <= 16, "from 0 (identical hashes) to 16 bits of 64"),
    "audit.folds": _least(2),
    "review.holdout": Rule(lambda v: 0 <= v < 1, "in [0, 1) (0 = every reviewed image trains)"),
    "deploy.training_cron": _CRON,
    "deploy.data_check_cron": _CRON,
    "deploy.monitor_cron": _CRON,
    "deploy.timezone": Rule(_zone, "an IANA time zone such as UTC or Europe/Berlin"),
    "locks.timeout": _least(0, "0 (no limit) or more seconds"),
}


def _validate(params: Params) -> None:
    """The split's two shares together (one message for both), then each key against its rule in RULES."""
    s = params.split
    if s.train_percent <= 0 or s.val_percent <= 0 or s.train_percent + s.val_percent != 100:
        raise ParamsError(
            f"split.train_percent ({s.train_percent}) and split.val_percent ({s.val_percent}) must both be"
            " above 0 and add up to 100; for example -o split.train_percent=80 -o split.val_percent=20"
        )
    for key, rule in RULES.items():
        section, name = key.split(".")
        value = getattr(getattr(params, section), name)
        if not rule.allowed(value):
            shown = repr(value) if isinstance(value, str) else value
            raise ParamsError(f"{key} must be {rule.text}, got {shown}")


def _key_lines(text: str) -> dict[tuple[str, str], int]:
    """The line of each `section: key:` in a YAML text (1-based), for errors that name file:line."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    lines: dict[tuple[str, str], int] = {}
    for section, values in root.value if isinstance(root, yaml.MappingNode) else []:
        lines[(str(section.value), "")] = section.start_mark.line + 1
        for key, _ in values.value if isinstance(values, yaml.MappingNode) else []:
            lines[(str(section.value), str(key.value))] = key.start_mark.line + 1
    return lines


def _read_yaml(path: Path) -> tuple[Mapping[str, Any], dict[tuple[str, str], int]]:
    """The sections of a parameter file, and the line of each key."""
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except UnicodeDecodeError as exc:
        raise ParamsError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ParamsError(f"{path}{line}: not valid YAML ({exc.problem}); fix the syntax there") from exc
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow, before any parsing
        line = text.count("\n", 0, exc.position) + 1
        raise ParamsError(
            f"{path}:{line}: not valid YAML (the character {chr(exc.character)!r} is not allowed); remove it"
        ) from exc
    if data is None:
        return {}, {}
    if not isinstance(data, Mapping):
        raise ParamsError(f"{path}: expected a mapping of sections (dataset:, split:, ...), got {data!r}")
    return data, _key_lines(text)


def load_params(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Params:
    """Resolve parameters: defaults, then `path` (or ./params.yaml if present), then overrides."""
    params = Params()
    if path is None and Path(DEFAULT_PARAMS_FILE).is_file():
        path = DEFAULT_PARAMS_FILE
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ParamsError(f"{path}: parameter file not found; pass --params PATH to an existing file")
        data, lines = _read_yaml(path)
        for section, values in data.items():
            if not isinstance(values, Mapping):
                raise ParamsError(
                    f"{path}:{lines.get((str(section), ''), '?')}: section {section!r} must be a mapping of keys, "
                    f"e.g. {section}:\n  key: value"
                )
            for key, value in values.items():
                _set(params, f"{section}.{key}", value, f"{path}:{lines.get((str(section), str(key)), '?')}")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ParamsError(f"override {item!r}: expected section.key=value, e.g. -o train.epochs=5")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        _set(params, key.strip(), value, f"override {item!r}")
    _validate(params)
    return params
