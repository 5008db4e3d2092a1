"""The pipeline as Prefect 3 flows. Each task is a thin wrapper over one component; no logic lives here.

Flows: `training-pipeline` (when the data changed, or with `force`: pull, check, split, train, evaluate,
audit, export, register, publish), `data-check` (pull, check), `promote-and-serve` (optionally promote a version
or roll back first, then publish the champion and (re)load it in Triton) and `monitor` (captured traffic
against the reference; drift builds the review queue and emits the Prefect event `sortflow.monitor.drift`).
Every flow takes
`overrides` ({"train.epochs": 3}: params.yaml keys, as `-o` and `dvc exp run -S`) and `params_file`.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from components.core.config import Params, load_params
from components.core.errors import InputError, retryable


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a step only when a service did not answer (ServiceError): bad data, bad settings and bugs fail
    the same way again, so they fail at once."""
    return retryable(state.result(raise_on_failure=False))


# Steps run once per flow run and write files: Prefect's result caching would only skip real work.
step = task(cache_policy=NO_CACHE, persist_result=False)
service_step = task(
    cache_policy=NO_CACHE, persist_result=False, retries=2, retry_delay_seconds=5, retry_condition_fn=_transient
)


def resolve_params(params_file: str | None, overrides: dict[str, Any] | None) -> Params:
    """params.yaml plus the flow's overrides, validated before any step runs."""
    return load_params(params_file, [f"{key}={value}" for key, value in (overrides or {}).items()])


@service_step(name="new-data")
def new_data(params: Params) -> tuple[bool, str]:
    """Whether the dataset's DVC version differs from the one the champion was trained on."""
    from components.integrations.mlflow_registry import training_needed

    needed, reason = training_needed(params)
    get_run_logger().info(reason)
    return needed, reason


@service_step(name="pull-data")
def pull_data(params: Params) -> str:
    from components.integrations.dvc_data import pull

    done = pull(params.dataset.dir)
    get_run_logger().info(done)
    return done


@step(name="check-dataset")
def check(params: Params) -> dict[str, Any]:
    """check-dataset; its report becomes an artifact, and a failed check stops the flow."""
    from pathlib import Path

    from components.steps.check_dataset import check_step

    outcome = check_step(params)
    text = outcome.text()
    create_markdown_artifact(f"## check-dataset: `{params.dataset.dir}`\n\n```\n{text}\n```\n", key="check-dataset")
    docs = Path(outcome.data_docs)
    if docs.is_file():
        create_link_artifact(docs.resolve().as_uri(), "Great Expectations Data Docs", key="data-docs")
    if outcome.exit_code:
        raise InputError(f"{params.dataset.dir} failed check-dataset, so the flow stops before training:\n{text}")
    return outcome.to_json()


@step(name="split")
def split(params: Params) -> dict[str, Any] | None:
    from components.steps.split import split_step

    result = split_step(params)
    return result.to_json() if result else None


@step(name="train")
def train(params: Params, params_file: str | None, overrides: dict[str, Any] | None) -> dict[str, Any]:
    from components.steps.train import run_training

    # The command that several GPUs relaunch under torchrun: `sortflow train` with this flow's parameters.
    argv = ["train", *(["--params", params_file] if params_file else [])]
    for key, value in (overrides or {}).items():
        argv += ["-o", f"{key}={value}"]
    result = run_training(params, argv)
    return result.to_json() if result is not None else {"output": params.train.output}


@step(name="evaluate")
def evaluate(params: Params) -> dict[str, Any]:
    from components.steps.evaluate import evaluate as evaluate_model

    return evaluate_model(params).to_json()


@step(name="audit")
def audit(params: Params) -> dict[str, Any]:
    """dataset audit after training: near-duplicates and likely label errors, as a report artifact; with
    audit.fail_on_leak, near-duplicates across splits fail the run."""
    from components.steps.audit import audit as audit_dataset

    result = audit_dataset(params)
    create_markdown_artifact(f"## dataset audit\n\n```\n{result.text()}\n```\n", key="dataset-audit")
    if result.exit_code:
        raise InputError(result.text())
    return result.to_json()


@step(name="export")
def export(params: Params) -> dict[str, Any]:
    from components.steps.export import export as export_model

    return export_model(params).to_json()


@service_step(name="register")
def register(params: Params) -> dict[str, Any]:
    from components.steps.register import register as register_model

    return register_model(params).to_json()


@service_step(name="publish")
def publish(params: Params) -> dict[str, Any]:
    """Publish the champion, then load it into the running Triton server, if there is one."""
    from components.steps.publish import publish as publish_model

    return publish_model(params).to_json()


@service_step(name="serve")
def serve(params: Params) -> dict[str, Any]:
    import dataclasses

    from components.steps import serve as triton

    return dataclasses.asdict(triton.status(params) or triton.start(params))


@service_step(name="shadow")
def shadow(params: Params, version: int) -> dict[str, Any]:
    """Start a shadow run of `version` beside the served champion (`sortflow shadow VERSION`)."""
    from components.steps.shadow import shadow as start_shadow

    result = start_shadow(params, version)
    get_run_logger().info(result.text())
    return result.to_json()


def _summary_artifact(params: Params, key: str) -> str:
    from components.steps.summary import pipeline_summary, summary_markdown

    markdown = summary_markdown(pipeline_summary(params))
    create_markdown_artifact(markdown, key=key, description="dataset, accuracy, promotion and the served model")
    return markdown


@flow(name="training-pipeline")
def training_pipeline(
    overrides: dict[str, Any] | None = None, params_file: str | None = None, force: bool = False
) -> str:
    """When the data changed since the champion was trained (or with `force`): pull the DVC data, check,
    split, train, evaluate, audit, export, register and publish to Triton. Otherwise it ends at once."""
    params = resolve_params(params_file, overrides)
    needed, reason = new_data(params)
    if not needed and not force:
        return reason
    pull_data(params)
    check(params)
    split(params)
    train(params, params_file, overrides)
    evaluate(params)
    audit(params)
    export(params)
    register(params)
    publish(params)
    return _summary_artifact(params, "training-pipeline-summary")


@flow(name="data-check")
def data_check(overrides: dict[str, Any] | None = None, params_file: str | None = None) -> dict[str, Any]:
    """Pull the DVC data and run check-dataset (a failed check fails the run, with the report attached)."""
    params = resolve_params(params_file, overrides)
    pull_data(params)
    return check(params)


@service_step(name="set-champion")
def set_champion(params: Params, version: int | None, rollback: bool, reason: str) -> dict[str, Any]:
    """Move the registry's champion by hand: to `version`, or back to the previous champion."""
    from components.integrations.mlflow_registry import who
    from components.steps import promote

    by = f"prefect flow run ({who()})"
    move = promote.rollback(params, reason, by) if rollback else promote.promote(params, version, reason, by)
    return move.to_json()


@flow(name="promote-and-serve")
def promote_and_serve(
    overrides: dict[str, Any] | None = None,
    params_file: str | None = None,
    start_server: bool = True,
    version: int | None = None,
    rollback: bool = False,
    reason: str = "",
    shadow_version: int | None = None,
) -> str:
    """Publish the registry's champion into the Triton repository and (re)load it; start Triton if asked.
    With `version`, that registry version becomes champion first; with `rollback`, the previous champion.
    With `shadow_version`, that version then shadows the champion on live traffic (serve.shadow_rate)."""
    params = resolve_params(params_file, overrides)
    if version is not None and rollback:
        raise InputError("promote-and-serve takes a version or rollback, not both")
    if version is not None or rollback:
        set_champion(params, version, rollback, reason)
    published = publish(params)
    if start_server and not published["reloaded"]:
        serve(params)
    if shadow_version is not None:
        shadow(params, shadow_version)
    return _summary_artifact(params, "promote-and-serve-summary")


@service_step(name="monitor-window")
def monitor_window(params: Params) -> Any:
    from components.steps.monitor import monitor

    return monitor(params)


@step(name="review")
def review(params: Params) -> dict[str, Any]:
    """The review queue of the window (the unsure, novel and drifting images, with heatmaps), as an artifact."""
    from components.steps.review import review as review_window

    result = review_window(params)
    create_markdown_artifact(f"## review queue\n\n```\n{result.text()}\n```\n", key="review")
    return result.to_json()


@flow(name="monitor")
def monitor(overrides: dict[str, Any] | None = None, params_file: str | None = None) -> Any:
    """Check the captured window for drift; the run's message says "drift" or "no drift", with a report artifact.

    Drift also builds the review queue of the window (`review.output`, for a person to label) and emits the
    event `sortflow.monitor.drift` (resource `sortflow.model.<name>`, the queue in its payload), for an
    automation.
    """
    from prefect.events import emit_event
    from prefect.states import Completed

    params = resolve_params(params_file, overrides)
    result = monitor_window(params)
    create_markdown_artifact(f"## monitor: {result.verdict}\n\n```\n{result.text()}\n```\n", key="monitor")
    if result.drift:
        queue = review(params)
        emit_event(
            event="sortflow.monitor.drift",
            resource={"prefect.resource.id": f"sortflow.model.{result.model}", "sortflow.version": result.version},
            payload={
                "verdict": result.verdict,
                "checks": [c.check for c in result.checks if c.drift],
                "review_queue": queue["queue"],
            },
        )
    return Completed(message=result.verdict, data=result.to_json())


FLOWS = {f.name: f for f in (training_pipeline, data_check, promote_and_serve, monitor)}
