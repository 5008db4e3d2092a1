"""Scheduled deployments of the flows, served by this process or deployed to a work pool (`sortflow deploy`).

`training-pipeline/nightly`, `data-check/hourly` and `monitor/hourly` run on the cron schedules of
params.yaml's `deploy` section, in its time zone; `promote-and-serve/manual` runs when triggered. Served
(`sortflow deploy`), runs execute in this process, in the project folder. Deployed to a work pool
(`sortflow deploy --work-pool`), that pool's workers run them: a `process` worker from this folder, a
`docker` or `kubernetes` one from the image given with `--image`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import deploy, serve
from prefect.deployments.runner import EntrypointType
from prefect.schedules import Cron

from components.core.config import Params
from components.core.errors import InputError

# (flow function in flows/pipeline.py, deployment name, params.yaml deploy key of its cron, description)
DEPLOYMENTS = (
    (
        "training_pipeline",
        "nightly",
        "training_cron",
        "The whole pipeline when the DVC data changed since the champion, then publish it to Triton.",
    ),
    (
        "data_check",
        "hourly",
        "data_check_cron",
        "check-dataset on the current DVC data; fails with the report when a check fails.",
    ),
    (
        "monitor",
        "hourly",
        "monitor_cron",
        "Captured traffic against the served version's reference; drift emits sortflow.monitor.drift.",
    ),
    ("promote_and_serve", "manual", None, "Publish the registry champion and (re)load it in Triton."),
)
ENTRYPOINT = "flows/pipeline.py:{}"  # relative to the project folder, where every flow run works


def deployments(
    params: Params,
    params_file: str | None,
    overrides: dict[str, Any],
    source: str | None = None,
    entrypoint_type: EntrypointType = EntrypointType.FILE_PATH,
) -> list[Any]:
    """The four deployments, parameterised with the same params file and overrides as this command.

    `source` (a project folder or a git URL) is where a work pool's workers get the code from; without it,
    the flows of this process are deployed (served here, or run from a container image that holds them).
    """
    from flows import pipeline

    d = params.deploy
    result = []
    for function, name, cron_key, description in DEPLOYMENTS:
        flow = getattr(pipeline, function)
        if source is not None:
            flow = flow.from_source(source=source, entrypoint=ENTRYPOINT.format(function))
        cron = getattr(d, cron_key) if cron_key else None
        deployment = flow.to_deployment(
            name=name,
            schedule=Cron(cron, timezone=d.timezone) if cron else None,
            parameters={"overrides": overrides, "params_file": params_file},
            description=description,
            tags=["sortflow"],
            entrypoint_type=entrypoint_type,
        )
        result.append(deployment)
    return result


def serve_deployments(params: Params, params_file: str | None, overrides: dict[str, Any]) -> None:
    """Register the deployments with the Prefect server and run their flow runs until interrupted."""
    serve(*deployments(params, params_file, overrides))


def _pool_takes_image(pool: str) -> bool:
    """Whether work pool `pool` starts each run in a container image (docker, kubernetes, ...)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            template = client.read_work_pool(pool).base_job_template
    except ObjectNotFound as exc:
        raise InputError(
            f"work pool {pool!r} is not on the Prefect server: create it first, for example "
            f"`prefect work-pool create {pool} --type process` (or --type docker, --type kubernetes)"
        ) from exc
    return "image" in template.get("variables", {}).get("properties", {})


def deploy_to_work_pool(
    params: Params, params_file: str | None, overrides: dict[str, Any], pool: str, image: str | None = None
) -> list[str]:
    """Register the deployments with the Prefect server for the work pool `pool`, whose workers run them;
    return their names. Without `image` (a `process` pool), workers run the code of this project folder;
    with it (a `docker` or `kubernetes` pool), each run starts that image, which must hold the project at
    its working directory (the Dockerfile's /opt/sortflow) and the flows as an installed module. Nothing is
    built or pushed. Raises SortflowError for a pool that is missing or takes the other kind of run."""
    takes_image = _pool_takes_image(pool)
    if takes_image and not image:
        raise InputError(
            f"work pool {pool!r} starts each run in a container: name the image that holds this project, "
            "--image REGISTRY/sortflow:TAG (built from the Dockerfile)"
        )
    if image and not takes_image:
        raise InputError(
            f"work pool {pool!r} runs flows as processes and takes no image: drop --image, or deploy to a "
            "docker or kubernetes pool"
        )
    if image:  # the code is where the image installed it: found by module, wherever this command runs
        built = deployments(params, params_file, overrides, entrypoint_type=EntrypointType.MODULE_PATH)
    else:
        built = deployments(params, params_file, overrides, source=str(Path.cwd()))
    deploy(*built, work_pool_name=pool, image=image, build=False, push=False, print_next_steps_message=False)
    return [f"{d.flow_name}/{d.name}" for d in built]
