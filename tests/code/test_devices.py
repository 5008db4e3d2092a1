"""Device strings and their mapping onto CUDA devices, and the provider choices of GPU inference: pure
functions, tested without a GPU (the GPU paths themselves run in bench/gpu_smoke.sh)."""

from __future__ import annotations

import pytest

from components.core.devices import DeviceSpec, parse_device, visible_devices
from components.core.errors import ParamsError, SortflowError


@pytest.mark.parametrize(
    ("spec", "several", "expected"),
    [
        ("cpu", True, DeviceSpec("cpu")),
        (" auto ", True, DeviceSpec("auto")),
        ("gpu", True, DeviceSpec("cuda", (0,))),
        ("gpu:3", False, DeviceSpec("cuda", (3,))),
        ("gpu:1,2", True, DeviceSpec("cuda", (1, 2))),
    ],
)
def test_device_strings(spec: str, several: bool, expected: DeviceSpec) -> None:
    assert parse_device(spec, "train.device", several) == expected


@pytest.mark.parametrize(
    ("spec", "several", "message"),
    [
        ("GPU", True, "device names are lower case; write -o predict.device=gpu"),
        ("Gpu:1", True, "write -o predict.device=gpu:1"),
        ("cuda", True, "sortflow calls CUDA devices gpu; write -o predict.device=gpu"),
        ("cuda:1", True, "write -o predict.device=gpu:1"),
        ("gpu:0,1", False, "this runs on one device; choose one, e.g. -o predict.device=gpu:0"),
        ("gpu:a", True, "expected gpu:N or gpu:N,M,... with GPU numbers"),
        ("gpu:1,1", True, "a GPU is named twice"),
        ("gpu:-1", True, "with GPU numbers 0, 1"),
        ("auto", False, "expected cpu, gpu or gpu:N"),
        ("tpu", True, "expected cpu, auto, gpu, gpu:N or gpu:N,M,..."),
    ],
)
def test_bad_device_strings_say_the_fix(spec: str, several: bool, message: str) -> None:
    with pytest.raises(ParamsError, match=r"predict\.device=") as info:
        parse_device(spec, "predict.device", several)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("ids", "visible", "count", "expected"),
    [
        ((0,), None, 4, ["0"]),
        ((1, 2), None, 4, ["1", "2"]),
        ((1, 2), "4,5,6,7", 4, ["5", "6"]),  # a scheduler gave this job GPUs 4-7
        ((0,), "GPU-5b3c,GPU-9d2a", 2, ["GPU-5b3c"]),  # UUIDs, as Kubernetes sets them
        ((1,), "MIG-a1, MIG-b2", 2, ["MIG-b2"]),
        ((0, 1), "3,1", 2, ["3", "1"]),
    ],
)
def test_gpu_numbers_map_through_the_visible_devices(
    ids: tuple[int, ...], visible: str | None, count: int, expected: list[str]
) -> None:
    assert visible_devices(ids, visible, count, "train.device") == expected


def test_a_gpu_that_is_not_visible_is_named_with_what_is() -> None:
    with pytest.raises(ParamsError, match=r"GPU \[2\] not found; this machine shows 2 \(CUDA_VISIBLE_DEVICES=4,5:"):
        visible_devices((1, 2), "4,5", 2, "train.device")
    with pytest.raises(ParamsError, match=r"GPU \[4\] not found; this machine shows 4 \(numbered 0 to 3\)"):
        visible_devices((4,), None, 4, "train.device")


def test_torchrun_children_see_only_their_mapped_gpus(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import torch

    from components.model import distributed as train

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    command, env = train.torchrun_command([1, 2], ["train"], tmp_path / "ranks")
    assert env["CUDA_VISIBLE_DEVICES"] == "5,6"
    assert "--nproc_per_node=2" in command and f"--log-dir={tmp_path / 'ranks'}" in command


def test_triton_runner_takes_cuda_on_its_own_gpu_or_fails() -> None:
    from components.triton_models.onnx_runner import providers_for

    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers_for("CPU", 0, cuda) == ["CPUExecutionProvider"]
    assert providers_for("GPU", 2, cuda) == [("CUDAExecutionProvider", {"device_id": 2})]
    with pytest.raises(RuntimeError, match="KIND_GPU, but this onnxruntime has no CUDA provider"):
        providers_for("GPU", 0, ["CPUExecutionProvider"])


def test_gpu_inference_that_fell_back_to_the_cpu_is_an_error() -> None:
    from components.model.onnx_session import require_cuda

    require_cuda(["CUDAExecutionProvider", "CPUExecutionProvider"], "gpu")
    with pytest.raises(SortflowError, match="did not load its CUDA provider"):
        require_cuda(["CPUExecutionProvider"], "gpu:1")


def test_instance_kind_is_cpu_or_gpu() -> None:
    from components.core.config import load_params

    assert load_params(None, ["publish.instance_kind=gpu"]).publish.instance_kind == "gpu"
    with pytest.raises(ParamsError, match=r"publish\.instance_kind must be cpu or gpu"):
        load_params(None, ["publish.instance_kind=GPU0"])
