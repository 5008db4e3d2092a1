"""Export, registry, publish and a real Triton server, end to end on a tiny model."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from components.core.errors import SortflowError
from components.core.fsutil import umask
from tests.serving.conftest import Release
from tests.support.helpers import captured_records, free_port, overrides


def load(release: Release, path: str) -> dict:
    return json.loads((release.workdir / path).read_text())


def params(release: Release, *extra: str):
    """The release's parameters as its commands resolve them: in its folder, which has no params.yaml."""
    from components.core.config import load_params

    cwd = os.getcwd()
    os.chdir(release.workdir)
    try:
        return load_params(None, [*release.args[1::2], *extra])
    finally:
        os.chdir(cwd)


def val_pixels(release: Release) -> np.ndarray:
    from components.model.onnx_session import raw_images

    images, _ = raw_images(release.dataset, "val", load(release, "output/export/export_result.json")["data_config"])
    return images


def local_probabilities(release: Release, images: np.ndarray) -> np.ndarray:
    from components.model.onnx_session import onnx_probabilities, onnx_session

    return onnx_probabilities(onnx_session(release.workdir / "output/export/model.onnx"), images)


def test_export_is_parity_checked_with_a_dynamic_batch(release: Release) -> None:
    result = load(release, "output/export/export_result.json")
    assert result["parity"]["max_abs_diff"] <= 1e-4 and result["parity"]["same_top1"]
    assert result["input"] == {
        "name": "image",
        "shape": ["batch", 3, 32, 32],
        "dtype": "float32",
        "format": "NCHW",
        "color": "RGB",
        "range": "0-255",
    }
    images = val_pixels(release)
    one, many = local_probabilities(release, images[:1]), local_probabilities(release, images)
    assert many.shape == (9, 3) and np.allclose(many.sum(1), 1, atol=1e-5)
    assert np.allclose(one, many[:1], atol=1e-6)


def test_export_folds_evaluates_temperature_into_the_model(release: Release) -> None:
    """The exported probabilities are the checkpoint's softmax of logits / T, with evaluate's T and thresholds;
    the predicted class is the uncalibrated one."""
    from components.model.calibration import softmax
    from components.model.checkpoints import load_checkpoint
    from components.model.deployable import deployable_from_checkpoint

    evaluated, exported = (load(release, f"output/{s}/{s}_result.json") for s in ("evaluate", "export"))
    assert exported["calibration"] == evaluated["calibration"] and exported["reject"] == evaluated["reject"]
    temperature = evaluated["calibration"]["temperature"]
    assert temperature != 1.0 and set(evaluated["reject"]["thresholds"]) == {"glass", "metal", "paper"}
    images = val_pixels(release)
    model = deployable_from_checkpoint(load_checkpoint(release.workdir / "output/train/best.pt"))
    with torch.no_grad():
        logits = model.logits(torch.from_numpy(images)).numpy()
    got = local_probabilities(release, images)
    assert got == pytest.approx(softmax(logits, temperature), abs=1e-5)
    assert (got.argmax(1) == logits.argmax(1)).all()
    profile = json.loads((release.workdir / "output/export/reference_profile.json").read_text())
    assert profile["thresholds"] == [evaluated["reject"]["thresholds"][c] for c in ("glass", "metal", "paper")]
    for name in ("reliability.png", "risk_coverage.png"):
        assert (release.workdir / "output/evaluate" / name).stat().st_size > 10_000


def test_export_fails_whole_when_parity_fails(release: Release, tmp_path: Path) -> None:
    from components.steps.export import export

    out = tmp_path / "export"
    with pytest.raises(SortflowError, match="disagrees with torch"):
        export(
            params(
                release,
                f"export.output={out}",
                "export.tolerance=0",
                "export.rtol=0",
                f"export.weight_path={release.workdir}/output/train/best.pt",
                # The tiny model's calibrated probabilities are near-uniform: equal to the last bit in float32.
                "evaluate.calibrate=false",
            )
        )
    assert not out.exists() and not list(tmp_path.iterdir())


def test_int8_variant_reports_size_and_top1_change(release: Release, tmp_path: Path) -> None:
    from components.steps.export import export

    result = export(
        params(
            release,
            f"export.output={tmp_path}/q",
            "export.quantize=true",
            f"export.weight_path={release.workdir}/output/train/best.pt",
        )
    )
    assert result.int8 is not None and result.int8.size_bytes < result.size_bytes / 2
    assert result.int8.top1_change == pytest.approx(result.int8.val_top1 - result.val_top1)
    assert (tmp_path / "q/model.int8.onnx").is_file()


def test_config_parses_with_tritons_schema(release: Release) -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    repo = release.workdir / "triton_repo"
    config = text_format.Parse((repo / "sortflow-classifier/config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 32
    assert config.input[0].format == model_config_pb2.ModelInput.FORMAT_NCHW
    assert list(config.input[0].dims) == [3, 32, 32] and config.output[0].label_filename == "labels.txt"
    assert (
        config.HasField("dynamic_batching")
        and config.model_warmup
        and list(config.version_policy.specific.versions) == [1]
    )
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert config.parameters["registry_version"].string_value == "1"
    assert len(config.parameters["mlflow_run_id"].string_value) == 32
    encoded = text_format.Parse(
        (repo / "sortflow-classifier_bytes/config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    assert encoded.backend == "python" and encoded.input[0].data_type == model_config_pb2.TYPE_STRING
    assert encoded.output[0].label_filename == "labels.txt"
    assert [o.name for o in encoded.output] == ["probabilities", "DECISION"] and len(encoded.input) == 1
    assert encoded.output[1].data_type == model_config_pb2.TYPE_STRING and list(encoded.output[1].dims) == [1]
    # The classifier keeps one input and one FP32 output (clients of Triton's examples work unchanged).
    assert len(config.input) == 1 and len(config.output) == 1
    assert config.output[0].data_type == model_config_pb2.TYPE_FP32
    thresholds = load(release, "output/export/export_result.json")["reject"]["thresholds"]
    written = ",".join(f"{thresholds[c]:.9g}" for c in ("glass", "metal", "paper"))
    assert encoded.parameters["unsure_thresholds"].string_value == written
    assert config.parameters["unsure_thresholds"].string_value == written
    assert encoded.parameters["classifier"].string_value == "sortflow-classifier"
    assert encoded.parameters["capture_rate"].string_value == "0"  # capture is off unless asked for
    assert encoded.parameters["inference"].string_value == "local"  # publish.bytes_inference auto, on the CPU
    files = {p.name for p in (repo / "sortflow-classifier_bytes/1").iterdir()}
    assert files >= {"model.py", "preprocess.py", "capture.py", "onnx_runner.py"}
    assert (repo / "sortflow-classifier/1/model.onnx").is_file()
    # Readable as the user's umask allows (a server running as another user must read it), not 0600/0700.
    mask = umask()
    for path in repo.rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o777 if path.is_dir() else 0o666) & ~mask, path
    profile = json.loads((repo / "sortflow-classifier/1/reference_profile.json").read_text())
    assert profile["labels"] == ["glass", "metal", "paper"] and profile["images"] == 9
    assert len(profile["confidence"]) == 9 and len(profile["stats"]["brightness"]) == 9
    assert (repo / "sortflow-classifier/labels.txt").read_text().splitlines() == ["glass", "metal", "paper"]


def test_promotion_gate_keeps_a_worse_model_out(release: Release) -> None:
    from mlflow.tracking import MlflowClient

    assert release.run("register", "-o", "register.min_improvement=0.5") == 0
    result = load(release, "output/register/register_result.json")
    assert result["promoted"] is False and result["version"] == 2 and result["champion_version"] == 1
    client = MlflowClient(tracking_uri=f"sqlite:///{release.workdir}/mlflow.db")
    assert str(client.get_model_version_by_alias("sortflow-classifier", "champion").version) == "1"
    challenger = client.get_model_version_by_alias("sortflow-classifier", "challenger")
    assert str(challenger.version) == "2" and "not promoted" in challenger.tags["promotion"]
    assert {"mlflow_run_id", "git_commit", "dataset_lists_hash", "params_hash", "val_top1", "val_top5"} <= set(
        challenger.tags
    )


def test_the_production_gate_refuses_a_challenger_that_costs_more_on_the_line(
    release: Release, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One model registered with two sets of unsure thresholds: equal on val, so the val gate passes; on the
    production images the one that sends everything to the manual sorter (at 5 an item, errors at 1) costs
    more and is refused, with its reasons, in register_result.json and `sortflow compare`."""
    import shutil

    from components.cli import main
    from tests.support.helpers import CLASSES, write_image

    dataset = shutil.copytree(release.dataset, tmp_path / "ds")
    rows = [(f"images/{CLASSES[i % 3]}/line_{i}.jpg", i % 3) for i in range(12)]
    for i, (rel, _) in enumerate(rows):
        write_image(dataset / rel, 7000 + i)
    (dataset / "production.txt").write_text("".join(f"{rel} {label}\n" for rel, label in rows))
    monkeypatch.chdir(tmp_path)
    base = [*release.args, *overrides(f"dataset.dir={dataset}", f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db")]
    base += overrides(f"export.weight_path={release.workdir}/output/train/best.pt", "register.min_production=12")
    base += overrides("register.unsure_cost=5")
    assert main(["export", *base]) == 0
    exported = tmp_path / "output/export/export_result.json"

    def register(threshold: float) -> dict:
        """Register the export with every class's threshold at `threshold` (0: always a class; 1: unsure)."""
        record = json.loads(exported.read_text())
        record["reject"]["thresholds"] = dict.fromkeys(CLASSES, threshold)
        exported.write_text(json.dumps(record))
        assert main(["register", *base]) == 0
        return json.loads((tmp_path / "output/register/register_result.json").read_text())

    first = register(0.0)
    assert first["promoted"] and first["production"]["decision"] == "skipped"
    assert first["production"]["reasons"] == ["no champion to compare with"]
    cautious = register(1.0)
    production = cautious["production"]
    assert not cautious["promoted"] and production["decision"] == "refuse" and production["images"] == 12
    assert [r.split(" (")[0] for r in production["reasons"]] == ["costs more"]
    assert production["challenger"]["top1"] == production["champion"]["top1"]  # the same answers
    assert production["challenger"]["cost_per_1000"] == 5000.0
    assert production["champion"]["cost_per_1000"] == pytest.approx((1 - production["champion"]["top1"]) * 1000)
    assert production["p_value"] == 1.0 and set(production["champion"]["recall"]) == set(CLASSES)
    assert "refused on 12 production images" in cautious["decision"]
    again = register(0.0)
    assert again["promoted"] and again["production"]["decision"] == "promote"
    capsys.readouterr()
    assert main(["compare", *base]) == 0
    assert "production_cost_per_1000" in capsys.readouterr().out


def test_labels_that_break_the_classification_extension_are_rejected() -> None:
    from components.integrations.triton_config import check_labels

    check_labels(["glass", "metal"])
    for bad in (["a:b"], ["ok", "two\nlines"], [" "]):
        with pytest.raises(SortflowError, match="breaks Triton's classification"):
            check_labels(bad)


def test_publish_without_champion_or_files(release: Release, tmp_path: Path) -> None:
    from components.steps.publish import publish

    with pytest.raises(SortflowError, match="has no champion"):
        publish(params(release, "register.model_name=nobody", f"mlflow.tracking_uri=sqlite:///{tmp_path}/e.db"))
    artifacts, aside = release.workdir / "mlruns", release.workdir / "mlruns.aside"
    os.rename(artifacts, aside)  # the registry version's files are gone
    try:
        with pytest.raises(
            SortflowError, match=r"registry version 1 of 'sortflow-classifier'.*register the model again"
        ):
            publish(params(release, f"publish.repo={tmp_path}/repo"))
    finally:
        os.rename(aside, artifacts)
    assert not (tmp_path / "repo").exists()


def test_grpc_and_http_equal_in_process_onnxruntime(release: Release, server: dict) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    images = val_pixels(release)
    expected = local_probabilities(release, images)
    for module, port in ((grpcclient, server["grpc_port"]), (httpclient, server["http_port"])):
        client = module.InferenceServerClient(f"127.0.0.1:{port}")
        inputs = [module.InferInput("image", list(images.shape), "FP32")]
        inputs[0].set_data_from_numpy(images)
        got = client.infer("sortflow-classifier", inputs).as_numpy("probabilities")
        assert np.abs(got - expected).max() <= 1e-5, module.__name__


def test_classification_extension_returns_our_labels(release: Release, server: dict) -> None:
    import tritonclient.grpc as grpcclient

    images = val_pixels(release)[:2]
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server['grpc_port']}")
    inputs = [grpcclient.InferInput("image", list(images.shape), "FP32")]
    inputs[0].set_data_from_numpy(images)
    result = client.infer(
        "sortflow-classifier", inputs, outputs=[grpcclient.InferRequestedOutput("probabilities", class_count=3)]
    )
    entries = [e.decode().split(":") for e in result.as_numpy("probabilities").reshape(-1)]
    assert {label for _, _, label in entries} == {"glass", "metal", "paper"}
    expected = local_probabilities(release, images)
    for score, index, _ in entries[:3]:
        assert float(score) == pytest.approx(expected[0, int(index)], abs=1e-5)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_bytes_model_classifies_encoded_files(release: Release, server: dict, fmt: str, tmp_path: Path) -> None:
    import tritonclient.grpc as grpcclient
    from PIL import Image

    from components.steps.predict import create_pipeline

    source = next((release.dataset / "images/metal").glob("*.jpg"))
    path = tmp_path / f"photo.{fmt.lower()}"
    Image.open(source).save(path, format=fmt)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server['grpc_port']}")
    data = np.array([[path.read_bytes()]], dtype=object)
    inputs = [grpcclient.InferInput("image_bytes", [1, 1], "BYTES")]
    inputs[0].set_data_from_numpy(data)
    got = client.infer("sortflow-classifier_bytes", inputs).as_numpy("probabilities")[0]
    local = next(create_pipeline(model_dir=str(release.workdir / "output/export"), topk=3).predict(str(path)))
    assert int(np.argmax(got)) == local["class_ids"][0]
    assert got[local["class_ids"]] == pytest.approx(local["scores"], abs=1e-5)


def test_bytes_model_decides_as_predict_does(release: Release, server: dict) -> None:
    """DECISION: the class, or unsure below the class's threshold; the same answers as `sortflow predict`."""
    import tritonclient.grpc as grpcclient

    from components.steps.predict import create_pipeline

    paths = sorted(release.dataset.glob("images/*/*.jpg"))
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server['grpc_port']}")
    inputs = [grpcclient.InferInput("image_bytes", [len(paths), 1], "BYTES")]
    inputs[0].set_data_from_numpy(np.array([[p.read_bytes()] for p in paths], dtype=object))
    response = client.infer("sortflow-classifier_bytes", inputs)
    decided = [d.decode() for d in response.as_numpy("DECISION")[:, 0]]
    probabilities = response.as_numpy("probabilities")
    thresholds = load(release, "output/export/export_result.json")["reject"]["thresholds"]
    labels = ["glass", "metal", "paper"]
    expected = [
        labels[row.argmax()] if row.max() >= thresholds[labels[row.argmax()]] else "unsure" for row in probabilities
    ]
    assert decided == expected
    local = create_pipeline(model_dir=str(release.workdir / "output/export"), topk=1).predict([str(p) for p in paths])
    assert [r["decision"] for r in local] == decided


def _bytes_probabilities(port: int, files: list[bytes]) -> np.ndarray:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    inputs = [grpcclient.InferInput("image_bytes", [len(files), 1], "BYTES")]
    inputs[0].set_data_from_numpy(np.array([[f] for f in files], dtype=object))
    return client.infer("sortflow-classifier_bytes", inputs).as_numpy("probabilities")


def test_bytes_model_through_the_classifier_answers_as_the_local_model(
    release: Release, server: dict, tmp_path: Path
) -> None:
    """publish.bytes_inference=classifier (the GPU's way: a BLS call to <model>) gives what the default
    local session in the decoding instance gives, for a batch of files; the embedder then runs in the decoding
    instance on the captured images only, and their records carry what it saw."""
    from components.integrations.triton_config import ModelInfo
    from components.model.contract import DataConfig
    from components.steps.publish import write_repository
    from components.steps.serve import start, stop

    ports = [f"serve.{key}={free_port()}" for key in ("grpc_port", "http_port", "metrics_port")]
    capture = (f"publish.capture_dir={tmp_path}/capture", "publish.capture_rate=1")
    bls = params(release, f"publish.repo={tmp_path}/repo", "publish.bytes_inference=classifier", *capture, *ports)
    bls.serve.workdir = str(tmp_path / "serve")
    data = DataConfig(**load(release, "output/export/export_result.json")["data_config"])
    info = ModelInfo(
        "sortflow-classifier", 1, 32, data.resize_size, data.interpolation, ["glass", "metal", "paper"], {}
    )
    export = release.workdir / "output/export"
    beside = {name: export / name for name in ("embedder.onnx", "embeddings.npz")}
    write_repository(tmp_path / "repo", info, export / "model.onnx", bls, beside)
    config = (tmp_path / "repo/sortflow-classifier_bytes/config.pbtxt").read_text()
    assert 'key: "inference" value: { string_value: "classifier" }' in config
    files = [p.read_bytes() for p in sorted((release.dataset / "images").rglob("*.jpg"))[:5]]
    start(bls)
    try:
        through_classifier = _bytes_probabilities(bls.serve.grpc_port, files)
        records = captured_records(tmp_path / "capture", len(files))
    finally:
        stop(bls)
    assert through_classifier == pytest.approx(_bytes_probabilities(server["grpc_port"], files), abs=1e-6)
    assert len(records) == len(files) and all(len(r["embedding"]) == 1368 and "novelty" in r for r in records)


def test_predict_cli_over_triton_and_bad_inputs(release: Release, server: dict, tmp_path: Path) -> None:
    good = next((release.dataset / "images/paper").glob("*.jpg"))
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    code = release.run(
        "predict",
        "--input",
        str(good),
        str(broken),
        "--triton",
        f"127.0.0.1:{server['grpc_port']}",
        "--save-path",
        str(tmp_path / "out"),
        "--topk",
        "2",
    )
    assert code == 1  # one input failed, the other was classified and saved
    result = json.loads((tmp_path / "out" / f"{good.stem}_res.json").read_text())
    assert set(result) == {"input_path", "class_ids", "scores", "label_names", "decision"}
    assert len(result["class_ids"]) == 2 and result["decision"] in {result["label_names"][0], "unsure"}
    assert (tmp_path / "out" / f"{good.stem}_res.png").is_file()
    assert not (tmp_path / "out" / "broken_res.json").exists()


def test_unreachable_triton_and_url_fail_fast(release: Release) -> None:
    from components.steps.predict import create_pipeline

    began = time.perf_counter()
    with pytest.raises(SortflowError, match=r"no Triton server answers at 127\.0\.0\.1:1"):
        create_pipeline(triton_url="127.0.0.1:1")
    assert time.perf_counter() - began < 10
    pipeline = create_pipeline(model_dir=str(release.workdir / "output/export"))
    (result,) = pipeline.predict("http://127.0.0.1:1/photo.jpg")
    assert not result.ok and "cannot fetch http://127.0.0.1:1/photo.jpg" in result["error"]


def test_port_in_use_is_named(release: Release, server: dict, tmp_path: Path) -> None:
    from components.steps.serve import start

    with pytest.raises(SortflowError, match=rf"port {server['grpc_port']} \(serve.grpc_port\) is already in use"):
        start(params(release, f"serve.workdir={tmp_path}/other"))


def test_new_version_is_served_without_restart(release: Release, server: dict) -> None:
    import tritonclient.http as httpclient

    assert release.run("register", "-o", "register.min_improvement=-1") == 0  # any score is promoted
    version = load(release, "output/register/register_result.json")["version"]
    assert release.run("publish") == 0
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server['http_port']}")
    deadline = time.monotonic() + 30
    while not client.is_model_ready("sortflow-classifier", str(version)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert client.is_model_ready("sortflow-classifier", str(version))
    config = client.get_model_config("sortflow-classifier")
    assert config["parameters"]["registry_version"]["string_value"] == str(version)
    # The decoding instances run the classifier's file of the version they are configured with.
    encoded = client.get_model_config("sortflow-classifier_bytes")
    assert encoded["parameters"]["registry_version"]["string_value"] == str(version)
    os.kill(server["pid"], 0)  # the same server process is still the one serving


def test_pipeline_config_and_python_api(release: Release, tmp_path: Path) -> None:
    import yaml

    from components import create_pipeline
    from components.steps.predict import PipelineConfig

    assert release.run("get-pipeline-config", "--save-path", str(tmp_path)) == 0
    written = yaml.safe_load((tmp_path / "pipeline.yaml").read_text())
    assert set(written) == {"model_dir", "device", "batch_size", "topk", "triton_url", "triton_model", "tracking_uri"}
    config = PipelineConfig(**{**written, "model_dir": str(release.workdir / "output/export"), "topk": 2})
    path = config.save(tmp_path / "pipeline.yaml")
    results = list(create_pipeline(path).predict(str(release.dataset / "images")))
    assert len(results) == 24 and all(r.ok and len(r["class_ids"]) == 2 for r in results)
    saved = results[0].save_to_json(tmp_path / "json")
    assert json.loads(saved.read_text())["label_names"] == results[0]["label_names"]
    assert results[0].save_to_img(tmp_path / "img").is_file()


def test_gpu_device_without_cuda_is_a_clear_error(release: Release) -> None:
    import onnxruntime as ort

    from components.steps.predict import create_pipeline

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(SortflowError, match="device=gpu: this onnxruntime has no CUDA provider"):
        create_pipeline(model_dir=str(release.workdir / "output/export"), device="gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a KIND_GPU model where there is no GPU")
def test_a_kind_gpu_model_without_a_gpu_fails_at_once_with_tritons_reason(release: Release, tmp_path: Path) -> None:
    from components.integrations.triton_config import ModelInfo
    from components.steps.publish import write_repository
    from components.steps.serve import start

    ports = [f"serve.{key}={free_port()}" for key in ("grpc_port", "http_port", "metrics_port")]
    gpu = params(
        release, f"publish.repo={tmp_path}/repo", "publish.instance_kind=gpu", f"serve.workdir={tmp_path}/s", *ports
    )
    export = release.workdir / "output/export"
    info = ModelInfo("gpu-model", 1, 32, 32, "bicubic", ["glass", "metal", "paper"], {})
    write_repository(tmp_path / "repo", info, export / "model.onnx", gpu)
    # publish.bytes_inference auto: a GPU classifier is called through Triton, not run on the decoding CPU
    assert 'string_value: "classifier"' in (tmp_path / "repo/gpu-model_bytes/config.pbtxt").read_text()
    began = time.monotonic()
    with pytest.raises(SortflowError, match=r"Triton could not load gpu-model: .*KIND_GPU but no GPUs are available"):
        start(gpu)
    assert time.monotonic() - began < 60  # told at once, not after the readiness timeout


def _successes(client, model: str) -> int:
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"]
    return sum(int(s["inference_stats"]["success"].get("count", 0)) for s in stats)


def test_bench_serve_loads_both_endpoints_and_reports_latency(
    release: Release, server: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server['grpc_port']}")
    models = ("sortflow-classifier", "sortflow-classifier_bytes")
    before = {m: _successes(client, m) for m in models}
    out = tmp_path / "bench.json"
    argv = ["bench-serve", "--concurrency", "1,3", "--requests", "15", "--images", str(release.dataset / "images")]
    assert release.run(*argv, "--json", str(out)) == 0
    levels = json.loads(out.read_text())["levels"]
    assert [(r["endpoint"], r["concurrency"]) for r in levels] == [
        ("pixels", 1),
        ("pixels", 3),
        ("bytes", 1),
        ("bytes", 3),
    ]
    for r in levels:
        assert r["requests"] == 15 and r["errors"] == 0 and r["per_second"] > 0
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
    assert "| bytes | 3 | 15 | 0 |" in capsys.readouterr().out
    # Every measured and warm-up request reached the server: 2 x concurrency warm-up + 15 per level.
    # The bytes model's requests reach the classifier too (one BLS call per dynamic batch, so not counted here).
    assert _successes(client, models[1]) - before[models[1]] == (2 + 15) + (6 + 15)
    assert _successes(client, models[0]) - before[models[0]] >= (2 + 15) + (6 + 15)


def test_bench_serve_counts_failed_requests_and_names_a_missing_server(
    release: Release, server: dict, tmp_path: Path
) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    argv = ["bench-serve", "--input", "bytes", "--concurrency", "2", "--requests", "6", "--images", str(tmp_path)]
    assert release.run(*argv, "--json", str(tmp_path / "out.json")) == 1  # every request answered INVALID_ARGUMENT
    (level,) = json.loads((tmp_path / "out.json").read_text())["levels"]
    assert level["errors"] == 6 and level["requests"] == 0
    assert release.run("bench-serve", "--input", "pixels", "--images", str(tmp_path)) == 2  # named, not a traceback
    assert release.run("bench-serve", "--url", f"127.0.0.1:{free_port()}", "--images", str(tmp_path)) == 2
    assert release.run("bench-serve", "--images", str(tmp_path / "nowhere")) == 2


def test_bench_serve_through_shared_memory_leaves_no_region(release: Release, server: dict, tmp_path: Path) -> None:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server['grpc_port']}")
    before = _successes(client, "sortflow-classifier")
    argv = ["bench-serve", "--input", "pixels", "--shared-memory", "system", "--concurrency", "2", "--requests", "10"]
    assert release.run(*argv, "--images", str(release.dataset / "images"), "--json", str(tmp_path / "b.json")) == 0
    (level,) = json.loads((tmp_path / "b.json").read_text())["levels"]
    assert level["requests"] == 10 and level["errors"] == 0
    assert _successes(client, "sortflow-classifier") - before == 4 + 10  # the pixels came through the region
    assert not client.get_system_shared_memory_status(as_json=True).get("regions")  # unregistered afterwards
    assert not [p for p in Path("/dev/shm").iterdir() if p.name.startswith("sortflow_bench_")]  # and removed


def test_shadow_refuses_the_champion_an_unknown_version_and_a_bad_command_line(
    release: Release, capsys: pytest.CaptureFixture[str]
) -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = release.workdir / "triton_repo/sortflow-classifier_bytes/config.pbtxt"
    before = config.read_text()
    champion = text_format.Parse(before, model_config_pb2.ModelConfig()).parameters["registry_version"].string_value
    cases = {
        ("shadow",): "give a registry VERSION to shadow the champion with, or --stop",
        ("shadow", "3", "--stop"): "give a registry VERSION to shadow the champion with, or --stop",
        ("shadow", champion): f"version {champion} of 'sortflow-classifier' is the published champion",
        ("shadow", "99"): "'sortflow-classifier' has no version 99 in the MLflow registry",
        ("shadow", "2", "-o", "serve.shadow_rate=0"): "serve.shadow_rate must be in (0, 1]",
        ("serve", "-o", "serve.shadow_rate=0.5"): "takes effect when `sortflow shadow VERSION` starts a shadow run",
    }
    for argv, message in cases.items():
        capsys.readouterr()
        assert release.run(*argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert config.read_text() == before  # nothing written
