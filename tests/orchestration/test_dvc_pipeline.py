"""The DVC path: dvc.yaml against the code, then `dvc repro` and `dvc exp run` in a temporary git copy."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from components.core.config import valid_keys
from tests.support.dvc_deps import stage_code
from tests.support.project import ROOT, project_copy
from tests.support.services import sh

STAGES = ["check_dataset", "split", "train", "evaluate", "audit", "export", "register", "publish"]
COMMANDS = {"audit": "sortflow dataset audit"}  # the stages whose command is not `sortflow <stage>`


def test_stages_read_sections_of_params_and_depend_on_the_code_they_run() -> None:
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    assert list(pipeline["stages"]) == STAGES
    keys = set(valid_keys())
    sections = {k.split(".")[0] for k in keys}
    for name, stage in pipeline["stages"].items():
        assert stage["cmd"] == COMMANDS.get(name, f"sortflow {name.replace('_', '-')}"), name
        code = [d for d in stage["deps"] if d.startswith("components/") and d.endswith(".py")]
        assert code == stage_code(name), f"{name}: run `python -m tests.support.dvc_deps`"
        for key in stage["params"]:
            assert key in keys or key in sections, f"{name}: {key} is not a params.yaml key"
    assert "components/triton_models" in pipeline["stages"]["publish"]["deps"]


def test_rewording_a_check_or_its_report_reruns_no_stage_after_split() -> None:
    """The gate of train, evaluate, export and register only reads the check's result file."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    report_code = {f"components/{m}.py" for m in ("data/expectations", "data/report", "integrations/gx_report")}
    for name in ("split", "train", "evaluate", "export", "register", "publish"):
        assert report_code.isdisjoint(stages[name]["deps"]), name


def test_every_train_key_that_changes_the_model_reruns_the_train_stage() -> None:
    """A new train.* key is a param of the stage unless dvc.yaml's header says why it is left out."""
    tracked = set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]["params"])
    speed_only = {"train.num_workers", "train.cache_mb", "train.resume"}
    assert {k for k in valid_keys() if k.startswith("train.")} - speed_only == tracked


@pytest.mark.slow
def test_dvc_repro_runs_every_stage_then_nothing(dvc_project: tuple[Path, str, Path]) -> None:
    project, first, _ = dvc_project
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first
    assert (project / "output/split/split_result.json").is_file()
    result = json.loads((project / "output/evaluate/evaluate_result.json").read_text())
    assert 0 <= result["metrics"]["val.top1"] <= 1
    assert (project / "triton_repo/sortflow-classifier/1/model.onnx").is_file()
    predictions = (project / "output/evaluate/predictions.csv").read_text()
    assert predictions.startswith("path,actual,predicted,score,decision\n")

    again = sh(["dvc", "repro"], project)
    assert "Running stage" not in again
    assert "Data and pipelines are up to date." in again
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)


@pytest.mark.slow
def test_dvc_experiment_reruns_train_and_after_only(dvc_project: tuple[Path, str, Path]) -> None:
    project, _, _ = dvc_project
    sh(["git", "add", "dvc.lock"], project)
    sh(["git", "commit", "-q", "-m", "dvc.lock after the first repro"], project)
    metrics = sh(["dvc", "metrics", "show"], project)
    assert "val.top1" in metrics
    assert "check_pass" in metrics

    exp = sh(["dvc", "exp", "run", "-S", "train.learning_rate=0.02"], project)
    ran = set(re.findall(r"Running stage '(\w+)'", exp))
    assert ran == {"train", "evaluate", "audit", "export", "register", "publish"}, exp

    shown = sh(["dvc", "exp", "show", "--no-pager", "--md"], project)
    assert "train.learning_rate" in shown
    assert "0.02" in shown
    diff = sh(["dvc", "params", "diff", "--md"], project)
    assert re.search(r"train\.learning_rate\s*\|\s*0\.01\s*\|\s*0\.02", diff), diff
    plots = sh(["dvc", "plots", "show", "-o", "plots"], project)
    assert (project / "plots/index.html").is_file(), plots


@pytest.mark.slow
def test_bad_params_stop_the_dvc_pipeline_before_any_output(tmp_path: Path) -> None:
    project = project_copy(tmp_path / "project")
    text = (project / "params.yaml").read_text().replace("epochs: 1", "epochs: 0")
    (project / "params.yaml").write_text(text)
    out = sh(["dvc", "repro"], project, check=False)
    assert "train.epochs must be 1 or more" in out
    assert not (project / "output").exists()
