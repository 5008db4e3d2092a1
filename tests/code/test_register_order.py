"""Registrations that overlap (several machines, one MLflow server) take the promotion gate in version order."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from components.core.errors import SortflowError
from components.integrations.mlflow_registry import REGISTERING, wait_for_earlier


def test_a_registration_waits_for_earlier_versions_still_being_registered(tmp_path: Path) -> None:
    """The gate runs in version order: version 2 waits while version 1 is being registered on another machine,
    goes on once that ends, and gives up after its timeout naming the version and machine it waited for."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("m")
    for _ in range(2):
        client.create_model_version("m", str(tmp_path), tags={REGISTERING: "other-machine:4242"})
    with pytest.raises(SortflowError, match=r"version 1 of 'm' is still being registered by other-machine:4242"):
        wait_for_earlier(client, "m", 2, timeout=0.2, poll=0.05)
    wait_for_earlier(client, "m", 1, timeout=0)  # nothing below version 1
    threading.Timer(0.5, client.delete_model_version_tag, ("m", "1", REGISTERING)).start()
    began = time.monotonic()
    wait_for_earlier(client, "m", 2, timeout=30, poll=0.05)
    assert 0.4 < time.monotonic() - began < 10


def test_a_registered_model_created_by_another_machine_meanwhile_is_used(tmp_path: Path) -> None:
    """Two machines that both found no registered model both create it: the second one's create finds it there
    and goes on (it failed with RESOURCE_ALREADY_EXISTS when the MLflow server made the race real)."""
    from components.integrations.mlflow_registry import ensure_registered_model

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    ensure_registered_model(client, "m", "first machine")
    ensure_registered_model(client, "m", "second machine")
    assert [m.name for m in client.search_registered_models()] == ["m"]
    assert client.get_registered_model("m").description == "first machine"


def test_a_retry_in_the_same_process_never_waits_for_its_own_earlier_attempt(tmp_path: Path) -> None:
    """A flow's retry runs in the process whose first attempt failed after creating its version: that version
    is abandoned, not waited for until register.queue_timeout runs out."""
    from components.integrations.mlflow_registry import registering_tag, repair_half_registered

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("m")
    client.create_model_version("m", str(tmp_path), tags={REGISTERING: registering_tag()})  # the failed attempt
    client.create_model_version("m", str(tmp_path), tags={REGISTERING: registering_tag()})  # the retry
    wait_for_earlier(client, "m", 2, timeout=0.2, poll=0.05)  # returns at once: raised before
    assert sorted(repair_half_registered(client, "m")) == [1, 2]
    assert client.search_model_versions("name='m'") == []


def test_a_registration_that_fails_after_creating_its_version_removes_it(tmp_path: Path) -> None:
    """Any exception past the new version (a service error, a bug) deletes it; one that had become champion
    keeps its place and loses only the in-progress tag."""
    from components.integrations.mlflow_registry import CHAMPION, registering

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("m")
    first = client.create_model_version("m", str(tmp_path), tags={REGISTERING: "here:1"})
    with pytest.raises(ZeroDivisionError), registering(client, "m", first):
        _ = 1 / 0
    assert client.search_model_versions("name='m'") == []
    second = client.create_model_version("m", str(tmp_path), tags={REGISTERING: "here:1"})
    with pytest.raises(ConnectionError), registering(client, "m", second):
        client.set_registered_model_alias("m", CHAMPION, second.version)
        raise ConnectionError("the store went away")
    kept = client.get_model_version("m", second.version)
    assert REGISTERING not in kept.tags
    assert client.get_model_version_by_alias("m", CHAMPION).version == second.version
