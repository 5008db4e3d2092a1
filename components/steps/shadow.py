"""shadow: run a registered version beside the champion on a sampled share of live traffic, answering nothing.

`sortflow shadow VERSION` puts that registry version's ONNX file beside the published champion
(`<model>/<VERSION>/model.onnx`, which the classifier's version policy does not serve) and sets
`shadow_version` and `shadow_rate` (`serve.shadow_rate`) in `<model>_bytes`'s config. The bytes model then
also classifies that share of its requests with the shadow version, in its own process, and captures both
answers; clients get the champion's answer only. `sortflow shadow --stop` ends it. A running server of the
repository loads the change without a restart, and a publish (a new champion) ends the shadow run too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.core.config import Params
from components.core.errors import InputError
from components.core.fsutil import atomic_write_text
from components.core.locks import locked
from components.core.results import StepResult
from components.integrations.mlflow_registry import downloaded
from components.integrations.triton_config import BYTES, parse_config
from components.integrations.triton_repo import place_version, published, version_files
from components.model.contract import LABELS_FILE
from components.serving.control import reload_if_running

log = logging.getLogger(__name__)

SHADOW_KEYS = ("shadow_version", "shadow_rate")


@dataclass(frozen=True)
class ShadowResult(StepResult):
    model_name: str
    champion_version: int  # the published version that answers the clients
    shadow_version: int | None  # None: no shadow run (stopped)
    rate: float
    reloaded: bool  # a running server of this repository loaded the change

    def text(self) -> str:
        where = "; reloaded in the running server" if self.reloaded else "; `sortflow serve` starts with it"
        if self.shadow_version is None:
            return f"{self.model_name}: no shadow run; version {self.champion_version} answers alone{where}"
        return (
            f"{self.model_name}: version {self.shadow_version} shadows champion version {self.champion_version} on "
            f"{self.rate:.0%} of the requests to {self.model_name}{BYTES} (captured, never answered){where}"
        )


def _bytes_config(repo: Path, name: str) -> tuple[Path, Any]:
    path = repo / f"{name}{BYTES}" / "config.pbtxt"
    if not path.is_file():
        raise InputError(f"{path} not found; publish a champion first (`sortflow publish`)")
    return path, parse_config(path.read_text(encoding="utf-8"), str(path))


def _write(path: Path, config: Any) -> None:
    from google.protobuf import text_format

    text = text_format.MessageToString(config)
    parse_config(text, str(path))
    atomic_write_text(path, text)


def _start(params: Params, version: int, config: Any, champion: int) -> None:
    from mlflow.exceptions import MlflowException

    from components.integrations import mlflow_tracking

    name, repo = params.register.model_name, Path(params.publish.repo)
    if version == champion:
        raise InputError(f"version {version} of {name!r} is the published champion; shadow another version")
    client, _ = mlflow_tracking.client(params.mlflow)
    try:
        registered = client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise InputError(f"{name!r} has no version {version} in the MLflow registry (`sortflow history`)") from exc
    served_labels = (repo / name / LABELS_FILE).read_text(encoding="utf-8").splitlines()
    with downloaded(params.mlflow, registered) as files:
        if files[LABELS_FILE].read_text(encoding="utf-8").splitlines() != served_labels:
            raise InputError(f"version {version} predicts other classes than champion version {champion}")
        # The folder that publish would write for this version, so a later promotion finds it in place.
        beside = version_files(files)
        if not published(repo / name / str(version), beside):
            place_version(repo / name, version, beside)
    config.parameters["shadow_version"].string_value = str(version)
    config.parameters["shadow_rate"].string_value = f"{params.serve.shadow_rate:g}"


@locked("publish.repo")
def shadow(params: Params, version: int | None) -> ShadowResult:
    """Shadow the champion in `publish.repo` with registry version `version` of `register.model_name` on
    `serve.shadow_rate` of the requests to `<model>_bytes`; `version` None stops the shadow run. Reloads a
    running server of the repository. Raises SortflowError for a version that is not registered, is the
    champion or predicts other classes, or a repository with nothing published."""
    name = params.register.model_name
    path, config = _bytes_config(Path(params.publish.repo), name)
    champion = int(config.parameters["registry_version"].string_value)
    for key in SHADOW_KEYS:
        if key in config.parameters:
            del config.parameters[key]
    if version is not None:
        _start(params, version, config, champion)
    _write(path, config)
    log.info("Shadow run of %s: %s", name, f"version {version}" if version is not None else "stopped")
    reloaded = reload_if_running(params, [name, f"{name}{BYTES}"])
    return ShadowResult(name, champion, version, params.serve.shadow_rate if version else 0.0, reloaded)
