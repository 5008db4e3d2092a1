"""The MLflow model registry as sortflow uses it: the files of a version, its aliases, and its download.

A registered version is MLflow's ONNX flavor with `extra_files`: labels.txt, export_result.json and the
train.txt it was trained on (versions registered before that lack train.txt).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from components.config import MlflowParams
from components.errors import ServiceError, SortflowError
from components.model_io import LABELS_FILE, MODEL_FILE, RESULT_FILE

CHAMPION, CHALLENGER = "champion", "challenger"
EXTRA = "extra_files"  # where MLflow's save_model puts extra_files
TRAIN_LIST = "train.txt"  # kept with each version, so a later gate knows which images it trained on
REQUIRED = (MODEL_FILE, LABELS_FILE, RESULT_FILE)


def artifact_files(model_dir: Path) -> dict[str, Path]:
    """model.onnx, labels.txt, export_result.json and train.txt of a downloaded registry version."""
    return {
        MODEL_FILE: model_dir / MODEL_FILE,
        LABELS_FILE: model_dir / EXTRA / LABELS_FILE,
        RESULT_FILE: model_dir / EXTRA / RESULT_FILE,
        TRAIN_LIST: model_dir / EXTRA / TRAIN_LIST,
    }


def champion_version(mlflow_client: Any, name: str) -> Any | None:
    """The version with alias `champion`, or None when the model has none (or is not registered)."""
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def _remote(uri: str) -> bool:
    return urlparse(uri).scheme not in ("", "file", "sqlite")


@contextlib.contextmanager
def downloaded(params: MlflowParams, version: Any) -> Iterator[dict[str, Path]]:
    """The files of a registry version (see `artifact_files`), downloaded into a folder removed afterwards.

    A store that does not answer is a ServiceError (worth a retry); files that are gone or incomplete are
    a SortflowError that says to register the model again.
    """
    import mlflow.artifacts as mlflow_artifacts
    from mlflow.exceptions import MlflowException

    from components.tracking import tracking_uri

    uri = tracking_uri(params)
    where = f"registry version {version.version} of {version.name!r}"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow_artifacts.download_artifacts(artifact_uri=version.source, dst_path=tmp, tracking_uri=uri)
        except (MlflowException, OSError) as exc:  # requests' connection errors are OSErrors too
            missing = isinstance(exc, MlflowException) and exc.error_code == "RESOURCE_DOES_NOT_EXIST"
            if _remote(uri) and not missing and not isinstance(exc, FileNotFoundError):
                raise ServiceError(f"{where}: the MLflow store {uri} did not answer ({exc}); try again") from exc
            raise SortflowError(
                f"{where}: its files at {version.source} cannot be read ({exc}); register the model again"
            ) from exc
        files = artifact_files(Path(local))
        missing = [name for name in REQUIRED if not files[name].is_file()]
        if missing:
            raise SortflowError(f"{where} lacks {', '.join(missing)} at {version.source}; register the model again")
        yield files
