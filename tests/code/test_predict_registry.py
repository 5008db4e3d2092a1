"""`sortflow predict --model models:/NAME@ALIAS` follows the registry: the alias is resolved on every run, and
the downloaded files are kept per tracking server and version."""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient

from components.integrations.mlflow_registry import CHAMPION, registry_model_dir
from components.model.contract import MODEL_FILE


def _version(client: MlflowClient, folder: Path, content: str) -> str:
    folder.mkdir(parents=True)
    (folder / MODEL_FILE).write_text(content)
    return client.create_model_version("m", str(folder)).version


def test_the_champion_alias_is_followed_after_promote_and_rollback(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/a.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("m")
    first, second = _version(client, tmp_path / "v1", "one"), _version(client, tmp_path / "v2", "two")
    cache = tmp_path / "cache"
    client.set_registered_model_alias("m", CHAMPION, first)
    assert (registry_model_dir("models:/m@champion", uri, cache) / MODEL_FILE).read_text() == "one"
    client.set_registered_model_alias("m", CHAMPION, second)  # promote
    assert (registry_model_dir("models:/m@champion", uri, cache) / MODEL_FILE).read_text() == "two"
    client.set_registered_model_alias("m", CHAMPION, first)  # rollback
    assert (registry_model_dir("models:/m@champion", uri, cache) / MODEL_FILE).read_text() == "one"
    assert (registry_model_dir("models:/m/2", uri, cache) / MODEL_FILE).read_text() == "two"


def test_two_tracking_servers_with_the_same_version_do_not_share_files(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    seen = []
    for server in ("a", "b"):
        uri = f"sqlite:///{tmp_path}/{server}.db"
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.create_registered_model("m")
        client.set_registered_model_alias("m", CHAMPION, _version(client, tmp_path / server, server))
        seen.append((registry_model_dir("models:/m@champion", uri, cache) / MODEL_FILE).read_text())
    assert seen == ["a", "b"]
