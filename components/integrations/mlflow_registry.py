"""The MLflow model registry as sortflow uses it: the files of a version, its aliases, and its download.

A registered version is MLflow's ONNX flavor with `extra_files`: labels.txt, export_result.json, the
train.txt it was trained on, its reference profile, its embedder, embeddings and torch weights (versions
registered before these lack them).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from components.core.config import MlflowParams, Params, redact_uri
from components.core.errors import InputError, ServiceError
from components.core.procs import gone
from components.model.contract import (
    EMBEDDER_FILE,
    EMBEDDINGS_FILE,
    LABELS_FILE,
    MODEL_FILE,
    PROFILE_FILE,
    RESULT_FILE,
    WEIGHTS_FILE,
)

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
EXTRA = "extra_files"  # where MLflow's save_model puts extra_files
TRAIN_LIST = "train.txt"  # kept with each version, so a later gate knows which images it trained on
REFERENCE_PROFILE = PROFILE_FILE  # what normal traffic looks like for the version (earlier versions lack it)
REQUIRED = (MODEL_FILE, LABELS_FILE, RESULT_FILE)
EXTRA_FILES = (LABELS_FILE, RESULT_FILE, TRAIN_LIST, REFERENCE_PROFILE, EMBEDDER_FILE, EMBEDDINGS_FILE, WEIGHTS_FILE)
REGISTERING = "sortflow.registering"  # host:pid while `register` has not finished with the version
HISTORY_TAG = "sortflow.champion."  # a registered-model tag per change of champion: key + time in ns


@dataclass(frozen=True)
class ChampionChange:
    """One change of the `champion` alias: who made which version champion, when and why."""

    at: str  # UTC, ISO 8601
    version: int
    previous: int | None
    by: str
    reason: str
    rollback: bool = False


def registering_tag() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _abandoned(tag: str) -> bool:
    """Whether the registration that left `tag` (host:pid) has ended without finishing: its process on this
    host is gone, or it is this very process (an earlier attempt that failed; a retry never waits for it)."""
    host, _, pid = tag.rpartition(":")
    return tag == registering_tag() or (pid.isdigit() and gone(host, int(pid)))


def abandon(mlflow_client: Any, name: str, version: Any, why: str) -> bool:
    """Undo a registration of `version` that did not end: one that had already become champion keeps its place
    (only its REGISTERING tag goes), any other is deleted. Returns whether the version was deleted."""
    champion = champion_version(mlflow_client, name)
    if champion is not None and champion.version == version.version:
        mlflow_client.delete_model_version_tag(name, version.version, REGISTERING)
        log.warning("Version %s of %r: its registration %s after it became champion; kept", version.version, name, why)
        return False
    mlflow_client.delete_model_version(name, version.version)
    log.warning("Removed version %s of %r: its registration %s before it ended", version.version, name, why)
    return True


@contextlib.contextmanager
def registering(mlflow_client: Any, name: str, version: Any) -> Iterator[None]:
    """Abandon `version` when what registers it fails, whatever the exception. A store that fails the clean-up
    too leaves the version tagged with this process, which the next registration (a retry here too) removes."""
    try:
        yield
    except BaseException as exc:
        try:
            abandon(mlflow_client, name, version, f"failed ({type(exc).__name__})")
        except Exception:
            log.warning("Could not remove version %s of %r; the next registration will", version.version, name)
        raise


def repair_half_registered(mlflow_client: Any, name: str) -> list[int]:
    """Versions of `name` whose registration ended before it was whole (their REGISTERING tag names a dead
    process of this host, or this process): each is abandoned. A version being registered elsewhere is only
    reported. Returns the versions deleted."""
    removed = []
    for version in mlflow_client.search_model_versions(f"name='{name}'"):
        tag = version.tags.get(REGISTERING)
        if tag is None:
            continue
        if not _abandoned(tag):
            log.warning("Version %s of %r is still being registered by %s", version.version, name, tag)
        elif abandon(mlflow_client, name, version, f"({tag}) was interrupted"):
            removed.append(int(version.version))
    return removed


def ensure_registered_model(client: Any, name: str, description: str) -> None:
    """Create registered model `name` unless it exists. Another machine may create it at the same moment
    (both asked, neither found it): the second create's RESOURCE_ALREADY_EXISTS means the model is there."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description=description)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def wait_for_earlier(mlflow_client: Any, name: str, version: int, timeout: float, poll: float = 0.5) -> None:
    """Wait until no version of `name` below `version` is still being registered by a live process.

    The registry's database numbers versions atomically, so gate decisions taken in version order are those
    that one registration at a time would take, from however many processes or machines register at once.
    Raises SortflowError after `timeout` seconds, naming the version and process waited for.
    """
    deadline = time.monotonic() + timeout
    while True:
        busy = [
            v
            for v in mlflow_client.search_model_versions(f"name='{name}'")
            if int(v.version) < version and REGISTERING in v.tags and not _abandoned(v.tags[REGISTERING])
        ]
        if not busy:
            return
        if time.monotonic() >= deadline:
            earliest = min(busy, key=lambda v: int(v.version))
            raise InputError(
                f"version {earliest.version} of {name!r} is still being registered by {earliest.tags[REGISTERING]} "
                f"after {timeout:.0f} s: wait for it, or raise register.queue_timeout. If that process was killed "
                f"on another machine, delete version {earliest.version} in MLflow, then register again"
            )
        time.sleep(poll)


def who() -> str:
    """user@host of this process, for the record of a change."""
    return f"{getpass.getuser()}@{socket.gethostname()}"


def set_champion(
    mlflow_client: Any, name: str, version: int, reason: str, by: str = "", rollback: bool = False
) -> ChampionChange:
    """Move `champion` to `version` and record the change (a model tag for the history, and promoted_by,
    promoted_at and promotion_reason on the version): the one way register, promote and rollback move it."""
    previous = champion_version(mlflow_client, name)
    change = ChampionChange(
        at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        version=int(version),
        previous=int(previous.version) if previous is not None else None,
        by=by or who(),
        reason=reason,
        rollback=rollback,
    )
    mlflow_client.set_registered_model_alias(name, CHAMPION, str(version))
    mlflow_client.set_registered_model_tag(name, f"{HISTORY_TAG}{time.time_ns()}", json.dumps(asdict(change)))
    for key, value in (("promoted_by", change.by), ("promoted_at", change.at), ("promotion_reason", reason)):
        mlflow_client.set_model_version_tag(name, str(version), key, value)
    return change


def champion_history(mlflow_client: Any, name: str) -> list[ChampionChange]:
    """Every recorded change of champion, oldest first (changes before sortflow recorded them are absent)."""
    tags = mlflow_client.get_registered_model(name).tags
    keys = sorted((k for k in tags if k.startswith(HISTORY_TAG)), key=lambda k: int(k[len(HISTORY_TAG) :]))
    return [ChampionChange(**json.loads(tags[k])) for k in keys]


def rollback_target(history: list[ChampionChange]) -> int | None:
    """The champion before the current one: promotions stack up and each rollback takes the top one off, so
    rolling back twice goes two champions back. None when the history holds no earlier champion."""
    # The champion before the first recorded change (one promoted before sortflow kept a history) counts.
    stack = [history[0].previous] if history and history[0].previous is not None else []
    for change in history:
        if change.rollback and len(stack) > 1 and stack[-2] == change.version:
            stack.pop()
        else:
            stack.append(change.version)
    return stack[-2] if len(stack) > 1 else None


def artifact_files(model_dir: Path) -> dict[str, Path]:
    """model.onnx and the extra files (EXTRA_FILES) of a downloaded version; an older version lacks some."""
    return {MODEL_FILE: model_dir / MODEL_FILE, **{name: model_dir / EXTRA / name for name in EXTRA_FILES}}


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

    from components.integrations.mlflow_tracking import tracking_uri

    uri = tracking_uri(params)
    where = f"registry version {version.version} of {version.name!r}"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow_artifacts.download_artifacts(artifact_uri=version.source, dst_path=tmp, tracking_uri=uri)
        except (MlflowException, OSError) as exc:  # requests' connection errors are OSErrors too
            missing = isinstance(exc, MlflowException) and exc.error_code == "RESOURCE_DOES_NOT_EXIST"
            if _remote(uri) and not missing and not isinstance(exc, FileNotFoundError):
                raise ServiceError(
                    f"{where}: the MLflow store {redact_uri(uri)} did not answer ({exc}); try again"
                ) from exc
            raise InputError(
                f"{where}: its files at {version.source} cannot be read ({exc}); register the model again"
            ) from exc
        files = artifact_files(Path(local))
        missing = [name for name in REQUIRED if not files[name].is_file()]
        if missing:
            raise InputError(f"{where} lacks {', '.join(missing)} at {version.source}; register the model again")
        yield files


def registry_model_dir(model_uri: str, uri: str, cache_root: Path) -> Path:
    """A registry model (`models:/NAME@ALIAS` or `models:/NAME/VERSION`) as a local folder. The alias is asked
    of the registry at `uri` each time, so a promote or rollback shows at once; each version's files are
    downloaded once, into a cache kept apart per tracking server (two servers may both have a version 3)."""
    import hashlib

    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from components.core.fsutil import staged_dir

    name, at, alias = model_uri.removeprefix("models:/").partition("@")
    if not at:
        name, _, alias = name.rpartition("/")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        version = client.get_model_version_by_alias(name, alias) if at else client.get_model_version(name, alias)
    except MlflowException as exc:
        raise InputError(f"{model_uri} not found in the registry at {redact_uri(uri)}: {exc.message}") from exc
    except OSError as exc:
        raise ServiceError(f"the MLflow registry {redact_uri(uri)} did not answer ({exc}); try again") from exc
    server = hashlib.sha256(uri.encode()).hexdigest()[:12]
    folder = cache_root / server / name / str(version.version)
    if not (folder / MODEL_FILE).is_file():
        import mlflow.artifacts as mlflow_artifacts

        with staged_dir(folder, replace=True) as stage:
            where = stage / ".download"
            local = mlflow_artifacts.download_artifacts(version.source, dst_path=str(where), tracking_uri=uri)
            for item in Path(local).iterdir():  # the artifact folder's files, not the folder itself
                item.rename(stage / item.name)
            shutil.rmtree(where)
    log.info("%s is version %s", model_uri, version.version)
    return folder


def training_needed(params: Params) -> tuple[bool, str]:
    """Whether `dataset.dir` holds data the champion was not trained on: its DVC hash against the champion's
    lineage tag. True (with the reason) when there is no champion or the dataset is not tracked by DVC."""
    from components.integrations import mlflow_tracking
    from components.integrations.dvc_data import dvc_md5

    folder, name = params.dataset.dir, params.register.model_name
    md5 = dvc_md5(folder)
    if md5 is None:
        return True, f"{folder} is not tracked by DVC, so it cannot tell what is new: training"
    client, _ = mlflow_tracking.client(params.mlflow)
    champion = champion_version(client, name)
    if champion is None:
        return True, f"{name!r} has no champion yet: training"
    trained_on = champion.tags.get("dataset_dvc_md5", "untracked")
    if trained_on == md5:
        return False, (
            f"nothing new to train on: {folder} is DVC version {md5[:12]}, the data champion version "
            f"{champion.version} was trained on"
        )
    return (
        True,
        f"{folder} changed since champion version {champion.version} was trained ({trained_on[:12]} -> {md5[:12]})",
    )
