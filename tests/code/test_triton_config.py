"""What publish writes into config.pbtxt for Triton's dynamic batcher, and what the bundled server keeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.core.config import load_params
from components.integrations.triton_config import ModelInfo, parse_config
from components.serving.process import runtime_model
from components.steps.publish import write_repository

INFO = ModelInfo("waste", 3, 32, 36, "bicubic", ["glass", "metal", "paper"], {})


def _published_model(tmp_path: Path, *overrides: str) -> Path:
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"not parsed by publish")
    params = load_params(None, [f"publish.repo={tmp_path / 'repo'}", *overrides])
    write_repository(Path(params.publish.repo), INFO, onnx, params)
    return Path(params.publish.repo) / "waste"


@pytest.mark.parametrize(("delay", "expected"), [(None, 0), ("750", 750)])
def test_queue_delay_reaches_both_servers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, delay: str | None, expected: int
) -> None:
    monkeypatch.chdir(tmp_path)  # the defaults, not the repository's params.yaml
    model = _published_model(tmp_path, *([f"publish.max_queue_delay_us={delay}"] if delay else []))
    stock = parse_config((model / "config.pbtxt").read_text(), "stock")
    assert stock.platform == "onnxruntime_onnx" and stock.HasField("dynamic_batching")
    assert stock.dynamic_batching.max_queue_delay_microseconds == expected
    runtime_model(model, tmp_path / "runtime" / "waste")  # the bundled server's python-backend copy
    bundled = parse_config((tmp_path / "runtime" / "waste" / "config.pbtxt").read_text(), "bundled")
    assert bundled.backend == "python" and bundled.dynamic_batching.max_queue_delay_microseconds == expected
    assert (tmp_path / "runtime" / "waste" / "3" / "model.py").is_file()
