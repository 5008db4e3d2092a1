"""Scheduled deployments of the flows, served by this process (`sortflow deploy`).

`training-pipeline/nightly` and `data-check/hourly` run on the cron schedules of params.yaml's `deploy`
section, in its time zone; `promote-and-serve/manual` runs when triggered. Runs execute here, in the
project folder; for a Docker or Kubernetes work pool, see the README.
"""

from __future__ import annotations

from typing import Any

from prefect import serve
from prefect.schedules import Cron

from components.config import Params
from flows.pipeline import data_check, promote_and_serve, training_pipeline


def deployments(params: Params, params_file: str | None, overrides: dict[str, Any]) -> list[Any]:
    """The three deployments, parameterised with the same params file and overrides as this command."""
    parameters = {"overrides": overrides, "params_file": params_file}
    tz = params.deploy.timezone
    return [
        training_pipeline.to_deployment(
            name="nightly",
            schedule=Cron(params.deploy.training_cron, timezone=tz),
            parameters=parameters,
            description="The whole pipeline on the current DVC data, then publish the champion to Triton.",
            tags=["sortflow"],
        ),
        data_check.to_deployment(
            name="hourly",
            schedule=Cron(params.deploy.data_check_cron, timezone=tz),
            parameters=parameters,
            description="check-dataset on the current DVC data; fails with the report when a check fails.",
            tags=["sortflow"],
        ),
        promote_and_serve.to_deployment(
            name="manual",
            parameters=parameters,
            description="Publish the registry champion and (re)load it in Triton.",
            tags=["sortflow"],
        ),
    ]


def serve_deployments(params: Params, params_file: str | None, overrides: dict[str, Any]) -> None:
    """Register the deployments with the Prefect server and run their flow runs until interrupted."""
    serve(*deployments(params, params_file, overrides))
