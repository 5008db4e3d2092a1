"""Registrations that overlap (several machines, one MLflow server) take the promotion gate in version order."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from components.errors import SortflowError
from components.registry import REGISTERING, wait_for_earlier


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
    from components.registry import ensure_registered_model

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    ensure_registered_model(client, "m", "first machine")
    ensure_registered_model(client, "m", "second machine")
    assert [m.name for m in client.search_registered_models()] == ["m"]
    assert client.get_registered_model("m").description == "first machine"
