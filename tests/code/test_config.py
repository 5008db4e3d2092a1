"""Parameters: defaults, params.yaml, -o overrides, and clear errors for wrong keys and types."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.core.config import Params, load_params, valid_keys
from components.core.errors import ParamsError
from tests.support.reference import params_comments

FIXED_NAMES = [
    "dataset.dir",
    "dataset.output",
    "split.enable",
    "split.train_percent",
    "split.val_percent",
    "split.seed",
    "train.model",
    "train.pretrained",
    "train.epochs",
    "train.batch_size",
    "train.learning_rate",
    "train.image_size",
    "train.device",
    "train.seed",
    "train.output",
    "train.resume",
    "evaluate.weight_path",
    "register.model_name",
    "register.min_improvement",
    "publish.repo",
    "serve.grpc_port",
    "serve.http_port",
    "serve.metrics_port",
]


def test_fixed_names_exist() -> None:
    assert set(FIXED_NAMES) <= set(valid_keys())


def test_defaults_without_params_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_params() == Params()
    assert Params().dataset.output == "output"


def test_repo_params_yaml_documents_every_key() -> None:
    """params.yaml holds every parameter (tuned for the demo data), each with a comment, and loads."""
    import yaml

    path = Path(__file__).resolve().parents[2] / "params.yaml"
    data = yaml.safe_load(path.read_text())
    keys = {f"{s}.{k}" for s, values in data.items() for k in values}
    assert keys == set(valid_keys())
    assert load_params(path).train.model == "EfficientNet-Lite0"
    text = path.read_text().splitlines()
    for key in valid_keys():
        name = key.split(".")[1]
        line = next(x for x in text if x.strip().startswith(f"{name}:"))
        assert "#" in line, f"params.yaml: {key} has no comment"


def test_params_yaml_differs_from_the_built_in_defaults_only_where_it_says_why() -> None:
    """The built-in defaults live in one place (the typed config); params.yaml tunes some of them for the demo
    data, and each such key's comment names the built-in value with the reason."""
    import yaml

    path = Path(__file__).resolve().parents[2] / "params.yaml"
    comments = params_comments(path)
    built_in = Params()
    silent = []
    for key in valid_keys():
        section, name = key.split(".")
        default = getattr(getattr(built_in, section), name)
        value = getattr(getattr(load_params(path), section), name)
        written = yaml.safe_dump(default).removesuffix("\n...\n").strip() if default != "" else "empty"
        if value != default and f"(built-in: {written}" not in comments[key]:
            silent.append(f"{key}: {value!r} here, {default!r} built in")
        if value == default:
            assert "built-in:" not in comments[key], f"{key} says it differs but does not"
    assert silent == []


def test_predict_takes_its_defaults_from_the_parameters() -> None:
    from components.steps.predict import PipelineConfig

    assert PipelineConfig().model_dir == Params().export.output
    assert PipelineConfig().triton_model == Params().register.model_name


def test_params_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("train:\n  epochs: 3\n  learning_rate: 1\nsplit:\n  seed: 7\n")
    params = load_params(path, ["train.epochs=5", "split.enable=true", "train.device=0", "dataset.dir=my data"])
    assert params.train.epochs == 5
    assert params.train.learning_rate == 1.0 and isinstance(params.train.learning_rate, float)
    assert params.split.seed == 7 and params.split.enable is True
    assert params.train.device == "0"
    assert params.dataset.dir == "my data"


def test_floats_in_exponent_notation_are_floats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """YAML reads 1e-4 as text; a float key takes it as the number, and still refuses nan and words."""
    monkeypatch.chdir(tmp_path)
    assert load_params(None, ["train.learning_rate=1e-4"]).train.learning_rate == 1e-4
    assert load_params(None, ["train.clip_grad_norm=1E1"]).train.clip_grad_norm == 10.0
    for bad in ("nan", "fast"):
        with pytest.raises(ParamsError, match=f"train.learning_rate: expected float, got '{bad}'"):
            load_params(None, [f"train.learning_rate={bad}"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "train.epoch=3",
            "unknown parameter 'train.epoch'. Did you mean train.epochs? Valid keys in train: train.model",
        ),
        ("nosuch.key=1", "unknown parameter 'nosuch.key'. Valid keys: dataset.dir"),
        ("train.epochs=three", "train.epochs: expected int, got 'three'"),
        ("split.enable=maybe", "split.enable: expected bool"),
        ("train.epochs", "expected section.key=value"),
        ("split.train_percent=70", "must both be above 0 and add up to 100"),
        ("train.drop_rate=1", "train.drop_rate must be in [0, 1) (0 = off), got 1.0"),
        ("train.drop_path_rate=-0.1", "train.drop_path_rate must be in [0, 1) (0 = off), got -0.1"),
        ("train.clip_grad_norm=-1", "train.clip_grad_norm must be 0 (off) or more, got -1.0"),
        ("publish.max_queue_delay_us=-5", "publish.max_queue_delay_us must be 0 or more, got -5"),
    ],
)
def test_bad_overrides(override: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParamsError) as info:
        load_params(None, [override])
    assert message in str(info.value)


def test_bad_params_file(tmp_path: Path) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  epochs: [1\n")
    with pytest.raises(ParamsError, match=r"params\.yaml:\d+: not valid YAML"):
        load_params(bad)
    bad.write_text("dataset:\n  dir: data\ntrain:\n  epoch: 1\n")
    with pytest.raises(
        ParamsError, match=r"params\.yaml:4: unknown parameter 'train\.epoch'\. Did you mean train\.epochs"
    ):
        load_params(bad)
    bad.write_text("train:\n  model: x\n  epochs: five\n")
    with pytest.raises(ParamsError, match=r"params\.yaml:3: train\.epochs: expected int, got 'five'"):
        load_params(bad)
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ParamsError, match=r"params\.yaml: not UTF-8 text"):
        load_params(bad)
    bad.write_text("train: 5\n")
    with pytest.raises(ParamsError, match=r"params\.yaml:1: section 'train' must be a mapping"):
        load_params(bad)
    with pytest.raises(ParamsError, match="parameter file not found"):
        load_params(tmp_path / "missing.yaml")


def test_every_params_file_in_the_repository_loads() -> None:
    from components.core.config import load_params

    root = Path(__file__).resolve().parents[2]
    files = sorted(root.glob("params*.yaml"))
    assert [f.name for f in files] == ["params.trashnet.yaml", "params.yaml"]
    for path in files:
        load_params(path)  # valid keys and values, or ParamsError with the file and line


def test_serve_refuses_a_setting_that_only_publish_applies(run_cli) -> None:
    """The bytes model's capture and limits are written by publish: `serve -o` on them would change nothing."""
    code, _, err = run_cli("serve", "--status", "-o", "publish.capture_rate=1")
    assert code == 2
    assert "publish.capture_rate takes effect when `sortflow publish` writes the model configs" in err
    assert "sortflow publish -o publish.capture_rate=1" in err
