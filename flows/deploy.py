"""Scheduled deployments of the flows, served by this process (`sortflow deploy`).

`training-pipeline/nightly`, `data-check/hourly` and `monitor/hourly` run on the cron schedules of
params.yaml's `deploy` section, in its time zone; `promote-and-serve/manual` runs when triggered. Runs
execute here, in the project folder; for a Docker or Kubernetes work pool, see the README.
"""

from __future__ import annotations

from typing import Any

from prefect import serve
from prefect.schedules import Cron

from components.config import Params
from flows.pipeline import data_check, monitor, promote_and_serve, training_pipeline


def deployments(params: Params, params_file: str | None, overrides: dict[str, Any]) -> list[Any]:
    """The four deployments, parameterised with the same params file and overrides as this command."""
    d = params.deploy
    return [
        flow.to_deployment(
            name=name,
            schedule=Cron(cron, timezone=d.timezone) if cron else None,
            parameters={"overrides": overrides, "params_file": params_file},
            description=description,
            tags=["sortflow"],
        )
        for flow, name, cron, description in (
            (
                training_pipeline,
                "nightly",
                d.training_cron,
                "The whole pipeline when the DVC data changed since the champion, then publish it to Triton.",
            ),
            (
                data_check,
                "hourly",
                d.data_check_cron,
                "check-dataset on the current DVC data; fails with the report when a check fails.",
            ),
            (
                monitor,
                "hourly",
                d.monitor_cron,
                "Captured traffic against the served version's reference; drift emits sortflow.monitor.drift.",
            ),
            (promote_and_serve, "manual", None, "Publish the registry champion and (re)load it in Triton."),
        )
    ]


def serve_deployments(params: Params, params_file: str | None, overrides: dict[str, Any]) -> None:
    """Register the deployments with the Prefect server and run their flow runs until interrupted."""
    serve(*deployments(params, params_file, overrides))
