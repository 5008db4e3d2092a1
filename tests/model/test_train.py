"""Training, resume, evaluation and their bad inputs, on tiny generated data (32 px, one or two epochs)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import components.steps.train as train_module
from components.model.checkpoints import load_checkpoint
from tests.support.helpers import TINY_TRAIN, overrides

Run = Callable[..., tuple[int, str, str]]
TINY = overrides(*TINY_TRAIN, "train.epochs=2")
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where CUDA is missing")


def train_args(dataset: Path, *extra: str) -> list[str]:
    return ["train", "-o", f"dataset.dir={dataset}", *TINY, *extra]


def mlflow_run(run_id: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri="sqlite:///mlflow.db").get_run(run_id)


def test_train_writes_paddlex_outputs_and_tracks_in_mlflow(run_cli: Run, dataset: Path) -> None:
    code, out, err = run_cli(*train_args(dataset))
    assert code == 0, err
    assert "Trained 2 epochs" in out
    result_dir = Path("output/train")
    for name in ("train.log", "config.yaml", "last.pt", "best.pt", "train_result.json", "curves.png", "metrics.csv"):
        assert (result_dir / name).is_file(), name
    result = json.loads((result_dir / "train_result.json").read_text())
    assert result["done_flag"] is True and result["model_name"] == "PP-LCNet_x0_5"
    assert result["label_dict"] == {"0": "glass", "1": "metal", "2": "paper"}
    assert set(result["models"]) == {"last", "best"} and result["models"]["best"]["path"] == "best.pt"
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    assert "epoch 2/2" in (result_dir / "train.log").read_text()
    ckpt = load_checkpoint(result_dir / "last.pt")  # weights_only=True
    assert {"model", "optimizer", "epoch", "best_top1", "steps_per_epoch", "world_size"} <= set(ckpt)
    assert ckpt["epoch"] == 2 and ckpt["world_size"] == 1

    run = mlflow_run(result["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.model"] == "PP-LCNet_x0_5" and run.data.params["train.epochs"] == "2"
    assert {"train_loss", "lr", "val_top1", "val_top5", "img_per_s"} <= set(run.data.metrics)
    assert run.data.tags["sortflow.dataset_lists_hash"]
    from mlflow.tracking import MlflowClient

    artifacts = {a.path for a in MlflowClient(tracking_uri="sqlite:///mlflow.db").list_artifacts(run.info.run_id)}
    assert {"config.yaml", "train.log", "curves.png"} <= artifacts


def test_resume_after_interruption_ends_like_a_straight_run(
    run_cli: Run, dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run_cli(*train_args(dataset, "-o", "train.output=straight"))[0] == 0
    straight = json.loads(Path("straight/train_result.json").read_text())["history"]

    real_save = train_module.save_checkpoint

    def save_then_stop(path: Path, state: dict) -> None:
        real_save(path, state)
        if path.name == "last.pt" and state["epoch"] == 1:
            raise KeyboardInterrupt  # the run dies right after writing epoch 1

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_stop)
    code, _, err = run_cli(*train_args(dataset, "-o", "train.output=resumed"))
    assert code == 130 and "interrupted" in err
    interrupted = load_checkpoint("resumed/last.pt")  # loadable after the interruption
    assert interrupted["epoch"] == 1
    assert mlflow_run(interrupted["mlflow_run_id"]).info.status == "KILLED"
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
    code, _, err = run_cli(*train_args(dataset, "-o", "train.output=resumed", "-o", "train.resume=true"))
    assert code == 0, err
    resumed = json.loads(Path("resumed/train_result.json").read_text())
    for key in ("train_loss", "val_loss", "val_top1", "val_top5", "lr"):
        assert [h[key] for h in resumed["history"]] == pytest.approx(
            [h[key] for h in straight], rel=1e-5, nan_ok=True
        ), key
    assert mlflow_run(resumed["mlflow_run_id"]).info.status == "FINISHED"


def test_the_weight_average_is_validated_saved_and_evaluated(run_cli: Run, dataset: Path) -> None:
    import torch

    assert run_cli(*train_args(dataset, "-o", "train.output=averaged"))[0] == 0  # the default: ema on
    result = json.loads(Path("averaged/train_result.json").read_text())
    ckpt = load_checkpoint("averaged/last.pt")
    assert set(ckpt["model"]) == set(ckpt["trained_model"])  # the average, and the trained weights to resume
    assert any(not torch.equal(ckpt["model"][k], ckpt["trained_model"][k]) for k in ckpt["model"])
    code, _, err = run_cli("evaluate", "-o", f"dataset.dir={dataset}", "-o", "train.output=averaged")
    assert code == 0, err  # evaluate scores best.pt's weights: the average, as training validated it
    evaluated = json.loads(Path("output/evaluate/evaluate_result.json").read_text())
    assert evaluated["metrics"]["val.top1"] == pytest.approx(result["models"]["best"]["score"], abs=1e-6)

    assert run_cli(*train_args(dataset, "-o", "train.output=plain", "-o", "train.ema_decay=0"))[0] == 0
    assert "trained_model" not in load_checkpoint("plain/last.pt")


def test_batch_mixing_dropout_and_clipping_train_on_mixed_labels(run_cli: Run, dataset: Path) -> None:
    """MixUp or CutMix turn each batch's labels into class shares; the loss takes them, smoothed. With
    train.clip_grad_norm, each epoch's row has the gradients' mean norm before clipping."""
    mixed = ("train.mixup_alpha=0.8", "train.cutmix_alpha=1.0", "train.drop_rate=0.2", "train.drop_path_rate=0.1")
    histories = {}
    for name, extra in (("plain", ("train.clip_grad_norm=0",)), ("mixed", (*mixed, "train.clip_grad_norm=0.5"))):
        code, _, err = run_cli(*train_args(dataset, "-o", f"train.output={name}", *overrides(*extra)))
        assert code == 0, err
        histories[name] = json.loads(Path(f"{name}/train_result.json").read_text())["history"]
    losses = {name: [h["train_loss"] for h in history] for name, history in histories.items()}
    assert all(math.isfinite(x) for x in losses["mixed"]) and losses["mixed"] != losses["plain"]
    assert all(h["grad_norm"] > 0 for h in histories["mixed"]) and "grad_norm" not in histories["plain"][0]
    assert "grad_norm" in Path("mixed/metrics.csv").read_text().splitlines()[0]


def test_evaluate_reports_topk_per_class_and_confusion(run_cli: Run, dataset: Path) -> None:
    assert run_cli(*train_args(dataset))[0] == 0
    code, out, err = run_cli(
        "evaluate", "-o", f"dataset.dir={dataset}", "-o", "evaluate.weight_path=output/train/best.pt"
    )
    assert "val.top1" in out
    assert code == 0, err
    result = json.loads(Path("output/evaluate/evaluate_result.json").read_text())
    best = json.loads(Path("output/train/train_result.json").read_text())["models"]["best"]["score"]
    assert result["metrics"]["val.top1"] == pytest.approx(best)
    assert 0 <= result["metrics"]["val.top1"] <= result["metrics"]["val.top5"] <= 1
    assert [c["label_name"] for c in result["per_class"]] == ["glass", "metal", "paper"]
    assert sum(c["support"] for c in result["per_class"]) == result["num_samples"] == 6
    matrix = json.loads(Path("output/evaluate/confusion_matrix.json").read_text())["matrix"]
    assert sum(map(sum, matrix)) == 6
    assert Path("output/evaluate/confusion_matrix.png").stat().st_size > 1000
    run = mlflow_run(json.loads(Path("output/train/train_result.json").read_text())["mlflow_run_id"])
    assert run.data.metrics["eval_top1"] == pytest.approx(result["metrics"]["val.top1"])


def test_compare_lists_runs_with_differing_params(run_cli: Run, dataset: Path) -> None:
    own = ("-o", "mlflow.experiment=compare")  # the other tests' runs share the tracking store
    for lr in ("0.1", "0.01"):
        args = train_args(
            dataset, "-o", "train.epochs=1", "-o", f"train.learning_rate={lr}", "-o", f"train.output=lr{lr}", *own
        )
        assert run_cli(*args)[0] == 0
    code, out, _ = run_cli("compare", *own)
    assert code == 0
    assert "train.learning_rate" in out and "0.01" in out and "val_top1" in out
    assert "train.output" in out and "train.model" not in out  # only what differs


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["-o", "train.model=LeNet"], "unknown model 'LeNet'. Valid names"),
        (["-o", "train.num_classes=5"], "train.num_classes=5, but"),
        pytest.param(["-o", "train.device=gpu"], "no CUDA device is available", marks=NO_CUDA),
        pytest.param(["-o", "train.device=gpu:0,1"], "no CUDA device is available", marks=NO_CUDA),
        (["-o", "train.device=cuda"], "sortflow calls CUDA devices gpu; write -o train.device=gpu"),
        (["-o", "train.device=tpu"], "expected cpu, auto, gpu"),
        (["-o", "train.resume=true"], "does not exist; train without resume first"),
    ],
)
def test_bad_training_input(run_cli: Run, dataset: Path, overrides: list[str], message: str) -> None:
    code, _, err = run_cli(*train_args(dataset, *overrides))
    assert code == 2
    assert message in err
    assert not Path("output/train/last.pt").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_device_auto_falls_back_to_cpu_with_a_warning(
    run_cli: Run, dataset: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert run_cli(*train_args(dataset, "-o", "train.device=auto", "-o", "train.epochs=1"))[0] == 0
    assert "no CUDA device found, training on the CPU" in caplog.text


def test_refuses_a_dataset_that_fails_the_check(run_cli: Run, dataset: Path) -> None:
    (dataset / "images/glass/glass_3.jpg").write_bytes(b"")
    code, _, err = run_cli(*train_args(dataset))
    assert code == 2
    assert "failed check-dataset" in err and "every image decodes fully" in err and "train.txt:2" in err
    assert not Path("output/train").exists()


def test_evaluate_and_export_follow_train_output_by_default(run_cli: Run, dataset: Path) -> None:
    """An empty weight_path (the default) means best.pt in train.output, wherever that is."""
    assert run_cli(*train_args(dataset, "-o", "train.output=elsewhere", "-o", "train.epochs=1"))[0] == 0
    code, out, err = run_cli("evaluate", "-o", f"dataset.dir={dataset}", "-o", "train.output=elsewhere")
    assert code == 0, err
    assert "elsewhere/best.pt" in out
    code, _, err = run_cli(
        "export", "-o", f"dataset.dir={dataset}", "-o", "train.output=elsewhere", "-o", "export.parity_images=4"
    )
    assert code == 0, err
    assert json.loads(Path("output/export/export_result.json").read_text())["weight_path"] == "elsewhere/best.pt"
    code, _, err = run_cli("export", "-o", f"dataset.dir={dataset}", "-o", "train.output=nowhere")
    assert code == 2 and "nowhere/best.pt: checkpoint not found; train first or set export.weight_path" in err


def test_checkpoint_of_another_model_or_dataset_is_refused(run_cli: Run, dataset: Path, tmp_path: Path) -> None:
    assert run_cli(*train_args(dataset, "-o", "train.epochs=1"))[0] == 0
    code, _, err = run_cli(*train_args(dataset, "-o", "train.resume=true", "-o", "train.model=MobileNetV3_small_x1_0"))
    assert code == 2 and "a checkpoint of PP-LCNet_x0_5 (lcnet_050), but train.model is MobileNetV3_small_x1_0" in err
    (dataset / "label.txt").write_text("0 glass\n1 metal\n2 cardboard\n")
    code, _, err = run_cli(
        "evaluate", "-o", f"dataset.dir={dataset}", "-o", "evaluate.weight_path=output/train/last.pt"
    )
    assert code == 2 and "trained on 3 classes (glass, metal, paper...)" in err
    bogus = tmp_path / "bogus.pt"
    torch.save({"weights": torch.zeros(1)}, bogus)
    code, _, err = run_cli("evaluate", "-o", f"dataset.dir={dataset}", "-o", f"evaluate.weight_path={bogus}")
    assert code == 2 and "not a sortflow checkpoint" in err


def test_ddp_two_processes_on_cpu_with_gloo(dataset: Path, tmp_path: Path) -> None:
    """torchrun starts two ranks; gradients are all-reduced over gloo and rank 0 alone writes files."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "components.cli",
        *train_args(dataset, "-o", f"train.output={tmp_path}/ddp", "-o", f"dataset.output={tmp_path}/out"),
    ]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("Trained 2 epochs") == 1  # printed by rank 0 only
    result = json.loads((tmp_path / "ddp/train_result.json").read_text())
    assert result["done_flag"] is True and len(result["history"]) == 2
    # Validation covers every val image once across the two ranks: accuracies are multiples of 1/6.
    assert all(abs(h["val_top1"] * 6 - round(h["val_top1"] * 6)) < 1e-6 for h in result["history"])
    assert load_checkpoint(tmp_path / "ddp/best.pt")["num_classes"] == 3


@pytest.mark.slow
def test_two_nodes_meeting_at_a_c10d_rendezvous_train_as_one_two_process_run(dataset: Path, tmp_path: Path) -> None:
    """Two torchrun launches, one per node folder (--nnodes=2 --nproc-per-node=1, c10d rendezvous on 127.0.0.1),
    train together over gloo: the node that got rank 0 alone writes the checkpoint, and its weights are those
    of the 2-process single-node run."""
    from tests.support.helpers import free_port

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    args = train_args(dataset, "-o", "train.output=train", "-o", f"dataset.output={tmp_path}/out")
    launcher = [sys.executable, "-m", "torch.distributed.run"]
    rendezvous = ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--rdzv-id=sortflow-test"]
    nodes = [tmp_path / f"node{i}" for i in range(2)]
    launches = []
    for node in nodes:
        node.mkdir()
        command = [*launcher, "--nnodes=2", "--nproc-per-node=1", *rendezvous, "-m", "components.cli", *args]
        launches.append(subprocess.Popen(command, env=env, cwd=node, stderr=subprocess.PIPE, text=True))
    for launch in launches:
        _, err = launch.communicate(timeout=300)
        assert launch.returncode == 0, err[-3000:]
    written = [node for node in nodes if (node / "train/best.pt").is_file()]
    assert len(written) == 1 and not any((node / "train").exists() for node in nodes if node not in written)
    single = tmp_path / "single"
    single.mkdir()
    command = [*launcher, "--standalone", "--nproc-per-node=2", "-m", "components.cli", *args]
    run = subprocess.run(command, env=env, cwd=single, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    both = [load_checkpoint(folder / "train/best.pt") for folder in (written[0], single)]
    assert both[0]["world_size"] == both[1]["world_size"] == 2
    assert both[0]["model"].keys() == both[1]["model"].keys()
    for key, tensor in both[0]["model"].items():
        assert torch.equal(tensor, both[1]["model"][key]), key


def _torchrun(dataset: Path, tmp_path: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    command += ["components.cli", *train_args(dataset, *extra)]
    return subprocess.Popen(
        command, env=env, cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


@pytest.mark.slow
def test_resume_on_another_number_of_processes_keeps_the_lr_schedule(tmp_path: Path) -> None:
    """Two gloo ranks train until the first epoch is saved and are killed; one process resumes. Its learning
    rate at each epoch's end is what an uninterrupted one-process run has (not the two-process step count)."""
    import signal
    import time

    from tests.support.helpers import cls_dataset

    dataset = cls_dataset(tmp_path / "ds", per_class=24, val_per_class=4)
    run = ["-o", "train.epochs=4", "-o", "train.warmup_epochs=1", "-o", f"dataset.output={tmp_path}/out"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    straight = subprocess.run(
        [sys.executable, "-m", "components.cli", *train_args(dataset, *run, "-o", "train.output=straight")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert straight.returncode == 0, straight.stderr[-2000:]
    ranks = _torchrun(dataset, tmp_path, *run, "-o", "train.output=moved")
    last, deadline = tmp_path / "moved/last.pt", time.monotonic() + 300
    while not last.is_file() and ranks.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(ranks.pid, signal.SIGKILL)
    ranks.wait()
    saved = load_checkpoint(last)
    assert saved["world_size"] == 2 and saved["epoch"] < 4
    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "components.cli",
            *train_args(dataset, *run, "-o", "train.output=moved", "-o", "train.resume=true"),
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    lr = {h["epoch"]: h["lr"] for h in json.loads((tmp_path / "moved/train_result.json").read_text())["history"]}
    expected = {
        h["epoch"]: h["lr"] for h in json.loads((tmp_path / "straight/train_result.json").read_text())["history"]
    }
    assert lr == pytest.approx(expected, rel=1e-6, abs=1e-12) and lr[4] == pytest.approx(0, abs=1e-12)


def _nonfinite_on_rank(rank: int, world: int, port: int, found: Any) -> None:
    import torch.distributed as distributed

    from components.model.distributed import Dist, nonfinite_ranks

    distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        loss = torch.tensor(float("nan") if rank == 1 else 0.5)
        found[rank] = nonfinite_ranks(loss, Dist(rank, world, rank), torch.device("cpu"))
    finally:
        distributed.destroy_process_group()


def test_a_nan_on_one_rank_stops_every_rank() -> None:
    """Rank 1 alone gets a NaN loss; both ranks learn it in the same step, so none waits in the next all-reduce."""
    import torch.multiprocessing as mp

    from tests.support.helpers import free_port

    with mp.Manager() as manager:
        found = manager.dict()
        mp.spawn(_nonfinite_on_rank, args=(2, free_port(), found), nprocs=2, join=True)
        assert dict(found) == {0: [1], 1: [1]}


def test_each_rank_augments_with_its_own_seed() -> None:
    from components.model.fit import augment_seed

    seeds = {augment_seed(42, epoch, rank) for epoch in range(1, 4) for rank in range(8)}
    assert len(seeds) == 24  # no two (epoch, rank) pairs share augmentation
    assert augment_seed(42, 3, 0) == 42 * 1000 + 3  # rank 0, as a single process has always seeded


def test_sigterm_ends_the_mlflow_run_killed(dataset: Path, tmp_path: Path) -> None:
    """torchrun stops the other ranks with SIGTERM when one fails: rank 0 must not leave its run RUNNING."""
    import signal
    import time

    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    args = train_args(dataset, "-o", "train.epochs=200", "-o", f"dataset.output={tmp_path}/out")
    process = subprocess.Popen(
        [sys.executable, "-m", "components.cli", *args], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    # Mid-training (after the first epoch's result), however slow this machine is at the moment.
    result, deadline = tmp_path / "output/train/train_result.json", time.monotonic() + 400
    while not result.is_file() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    assert result.is_file(), f"no epoch ended: {process.poll()=}"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(60)
    assert process.returncode == 130 and "interrupted" in err, err[-3000:]
    run_id = json.loads(result.read_text())["mlflow_run_id"]
    from mlflow.tracking import MlflowClient

    assert MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db").get_run(run_id).info.status == "KILLED"


def test_a_sigterm_during_an_mlflow_write_is_raised_when_the_write_ends() -> None:
    """Raised halfway through an MLflow write, the stop left SQLite's transaction open: the write that ends the
    run KILLED then found the store locked ("database is locked") and the run stayed RUNNING."""
    import signal

    from components.steps.train import Terminated, terminated_on_sigterm

    before, steps = signal.getsignal(signal.SIGTERM), []
    with pytest.raises(Terminated), terminated_on_sigterm() as sigterm:
        with sigterm.deferred():
            signal.raise_signal(signal.SIGTERM)
            steps.append("the write ended")
        steps.append("training went on")
    with pytest.raises(Terminated), terminated_on_sigterm():
        signal.raise_signal(signal.SIGTERM)  # elsewhere it stops the training where it is
        steps.append("training went on")
    assert steps == ["the write ended"]
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_failed_distributed_run_names_the_failing_rank(tmp_path: Path) -> None:
    """The launcher's error carries the end of the failing rank's own output, which train.log never holds."""
    from components.model.distributed import rank_failure

    for rank, text in (
        ("0", "epoch 1/2 ...\nSignal 15 (SIGTERM) received\n"),
        ("1", "Traceback (most recent call last):\n  File x\ntorch.OutOfMemoryError: CUDA out of memory\n"),
    ):
        log = tmp_path / "ranks" / "run_0" / "attempt_0" / rank / "stderr.log"
        log.parent.mkdir(parents=True)
        log.write_text(text)
    said = rank_failure(tmp_path / "ranks")
    assert said.startswith("rank 1 (") and "CUDA out of memory" in said
    assert "no rank left a traceback" in rank_failure(tmp_path / "empty")
