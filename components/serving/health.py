"""The health of a running Triton server's models, as a client sees it, and the memory of its processes."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from components.integrations.triton_config import parse_config
from components.serving.state import ServerState

PROBE = "sortflow_probe"  # a request parameter: the bytes model does not capture health probes


def _probe_input(config: Any) -> Any:
    """The smallest valid request for a model: one 8x8 PNG for an encoded-image input, else zeros."""
    import io

    import numpy as np
    import tritonclient.http as httpclient
    from PIL import Image
    from tritonclient.grpc import model_config_pb2

    spec = config.input[0]
    if spec.data_type == model_config_pb2.TYPE_STRING:
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buffer, "PNG")
        data = np.array([[buffer.getvalue()]], dtype=object)
        tensor = httpclient.InferInput(spec.name, list(data.shape), "BYTES")
    else:
        data = np.zeros([1, *spec.dims], dtype=np.float32)
        tensor = httpclient.InferInput(spec.name, list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    return tensor


def model_health(state: ServerState, model: str) -> str:
    """Healthy when the model answers a probe request, else what went wrong (a model whose backend
    process died still reports ready to Triton's ready endpoint, so only a request tells)."""
    import tritonclient.http as httpclient

    config_file = Path(state.served_repo) / model / "config.pbtxt"
    client = httpclient.InferenceServerClient(state.http_address)
    try:
        client.infer(
            model, [_probe_input(parse_config(config_file.read_text(), str(config_file)))], parameters={PROBE: True}
        )
    except Exception as exc:  # whatever the server answers, the model did not classify
        return f"unhealthy: {exc}"
    return "healthy"


def _resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def resident_memory(pid: int) -> list[dict[str, Any]]:
    """Resident memory (MB) of the server and of each backend process it runs, named by model (Linux)."""
    out = [{"process": "tritonserver", "pid": pid, "rss_mb": round(_resident_mb(pid), 1)}]
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    for child in map(int, children):
        try:
            args = [a for a in Path(f"/proc/{child}/cmdline").read_text().split("\0") if a]
            rss = _resident_mb(child)
        except OSError:  # ended since pgrep listed it
            continue
        if not args:  # exited, not yet reaped: it holds no memory
            continue
        # A python-backend stub's arguments hold <repository>/<model>/<version>/model.py.
        model = next((Path(a).parts[-3] for a in args if a.endswith("model.py")), Path(args[0]).name)
        out.append({"process": model, "pid": child, "rss_mb": round(rss, 1)})
    return out


def model_ready(host: str, http_port: int, model: str) -> bool:
    """Whether Triton reports `model` ready on its HTTP endpoint."""
    try:
        with urllib.request.urlopen(f"http://{host}:{http_port}/v2/models/{model}/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def failed_to_load(host: str, http_port: int, models: list[str]) -> dict[str, str]:
    """The models among `models` that Triton marked UNAVAILABLE, with its reason (a KIND_GPU model without a
    GPU, a backend that is missing): waiting longer would not load them."""
    if not models:
        return {}
    request = urllib.request.Request(f"http://{host}:{http_port}/v2/repository/index", data=b"{}", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=2) as r:
            index = json.loads(r.read())
    except (OSError, ValueError):
        return {}
    return {e["name"]: e.get("reason", "") for e in index if e["name"] in models and e.get("state") == "UNAVAILABLE"}


