"""A running server told to load models again: after a publish, or when a model's backend process died."""

from __future__ import annotations

import logging
from pathlib import Path

from components.core.config import Params
from components.core.errors import InputError, ServiceError
from components.serving.process import runtime_model
from components.serving.state import ServerState, read_state

log = logging.getLogger(__name__)


def running_server(params: Params) -> ServerState | None:
    """The running server started from this folder (`serve.workdir`), or None (also when its pid now names
    another process)."""
    state = read_state(Path(params.serve.workdir))
    return state if state is not None and state.alive() else None


def reload(params: Params, models: list[str] | None = None) -> ServerState:
    """Load `models` (default: all of them) again in the running server: a new version after a publish, or a
    model whose backend process died. Refreshes the bundled server's runtime copy first. A server that does
    not answer or fails to load a model is a ServiceError (a retry may help: the files are in place)."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    state = running_server(params)
    if state is None:
        raise InputError("no Triton server is running from this folder; start one with `sortflow serve`")
    models = models or state.models
    repo = Path(state.repo)
    if not state.stock_triton:
        for name in models:
            runtime_model(repo / name, Path(state.served_repo) / name)
    address = state.http_address
    client = httpclient.InferenceServerClient(address)
    for name in models:
        try:
            client.load_model(name)
        except (InferenceServerException, OSError) as exc:
            raise ServiceError(
                f"the Triton server on {address} (pid {state.pid}) did not load {name} "
                f"({exc}); see {state.log}, or restart it with `sortflow serve --stop` and `sortflow serve`"
            ) from exc
    log.info("Loaded %s into the running server", ", ".join(models))
    return state


def reload_if_running(params: Params, models: list[str]) -> bool:
    """After a publish: load these models in the running server (no restart) if one serves `publish.repo`."""
    state = running_server(params)
    if state is None or Path(state.repo) != Path(params.publish.repo).resolve():
        return False
    reload(params, models)
    return True
