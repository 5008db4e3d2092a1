"""promote, rollback and history: moving the registry's `champion` by hand, with a record of who, when and why.

`promote VERSION` makes a registered version champion (bypassing register's gate, on a person's word);
`rollback` goes back to the champion before the current one; `history` lists which version was champion
when. Every change is recorded by `mlflow_registry.set_champion`, as register's own promotions are. The
caller publishes the new champion, which reloads a running server (`sortflow promote`, `sortflow rollback`
and the promote-and-serve flow all do).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from components.core.config import Params
from components.core.errors import InputError
from components.core.results import StepResult, format_table
from components.integrations.mlflow_registry import (
    ChampionChange,
    champion_history,
    champion_version,
    downloaded,
    rollback_target,
    set_champion,
)

log = logging.getLogger(__name__)


def _registered(mlflow_client: Any, name: str, version: int) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise InputError(
            f"{name!r} has no registry version {version}; `sortflow history` lists the versions and champions"
        ) from exc


def _client(params: Params) -> Any:
    from components.integrations import mlflow_tracking

    return mlflow_tracking.client(params.mlflow)[0]


@dataclass(frozen=True)
class ChampionMove(StepResult):
    model_name: str
    change: ChampionChange | None  # None: the version was champion already

    def text(self) -> str:
        c = self.change
        if c is None:
            return f"{self.model_name}: that version is already champion"
        return f"{self.model_name}: champion version {c.previous} -> {c.version} by {c.by} ({c.reason})"


@dataclass(frozen=True)
class ChampionHistory(StepResult):
    model_name: str
    changes: list[ChampionChange]  # oldest first

    def text(self) -> str:
        if not self.changes:
            return "No change of champion recorded yet"
        rows = [
            {**asdict(c), "previous": "-" if c.previous is None else c.previous, "rollback": "yes" * c.rollback}
            for c in self.changes
        ]
        return format_table(["at", "version", "previous", "by", "rollback", "reason"], rows)


def _move(client: Any, params: Params, version: int, reason: str, by: str, rollback: bool) -> ChampionMove:
    name = params.register.model_name
    target = _registered(client, name, version)
    current = champion_version(client, name)
    if current is not None and int(current.version) == version:
        log.info("%s version %d is already champion: nothing changed", name, version)
        return ChampionMove(name, None)
    with downloaded(params.mlflow, target):
        pass  # a version whose files are gone or incomplete is refused before it becomes champion
    change = set_champion(client, name, version, reason, by, rollback=rollback)
    log.info("%s: champion %s -> %d by %s (%s)", name, change.previous, version, change.by, reason)
    return ChampionMove(name, change)


def promote(params: Params, version: int, reason: str = "", by: str = "") -> ChampionMove:
    """Make registry version `version` of `register.model_name` champion, recording `by` (default user@host)
    and `reason`. Raises SortflowError for a version that is not registered or has lost its files."""
    return _move(_client(params), params, version, reason or "promoted by hand", by, rollback=False)


def rollback(params: Params, reason: str = "", by: str = "") -> ChampionMove:
    """Make the champion before the current one champion again (see `mlflow_registry.rollback_target`)."""
    client, name = _client(params), params.register.model_name
    target = rollback_target(_history(client, name))
    if target is None:
        raise InputError(
            f"{name!r} has no earlier champion to roll back to in its history (`sortflow history`); "
            "promote a version by number instead: sortflow promote VERSION"
        )
    return _move(client, params, target, reason or "rolled back by hand", by, rollback=True)


def _history(mlflow_client: Any, name: str) -> list[Any]:
    from mlflow.exceptions import MlflowException

    try:
        return champion_history(mlflow_client, name)
    except MlflowException as exc:
        raise InputError(f"{name!r} is not in the MLflow registry; run `sortflow register` first") from exc


def history(params: Params) -> ChampionHistory:
    """Each change of champion of `register.model_name`, oldest first: at, version, previous, by, reason."""
    name = params.register.model_name
    return ChampionHistory(name, _history(_client(params), name))
