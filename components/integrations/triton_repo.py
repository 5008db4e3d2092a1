"""Version folders of a Triton model repository: written aside and renamed into place whole, and never
rewritten once published (a running server may be reading them). Shared by publish and shadow."""

from __future__ import annotations

import shutil
from pathlib import Path

from components.core.errors import InputError
from components.core.fsutil import file_digest, staged_dir
from components.model.contract import EMBEDDER_FILE, EMBEDDINGS_FILE, MODEL_FILE, PROFILE_FILE, WEIGHTS_FILE

# Beside the ONNX file in a classifier's version folder, where the registry version has them: the reference
# profile (monitor), the embedder and the embeddings (what <model>_bytes runs for the capture and novelty),
# and the torch weights (the review sheet's heatmaps). Triton loads only model.onnx.
BESIDE_MODEL = (PROFILE_FILE, EMBEDDER_FILE, EMBEDDINGS_FILE, WEIGHTS_FILE)


def version_files(files: dict[str, Path]) -> dict[str, Path]:
    """What goes into a classifier's version folder, out of a registry version's files (`artifact_files`)."""
    return {MODEL_FILE: files[MODEL_FILE], **{name: files[name] for name in BESIDE_MODEL if files[name].is_file()}}


def same_files(folder: Path, files: dict[str, Path]) -> bool:
    """Whether `folder` holds exactly these files (name -> source), byte for byte."""
    present = {p.name for p in folder.iterdir()}
    return present == set(files) and all(file_digest(folder / n) == file_digest(src) for n, src in files.items())


def published(target: Path, files: dict[str, Path]) -> bool:
    """Whether version folder `target` is already published with these files. A published version is
    immutable, since a server may be reading it: other files under its number are refused."""
    if not target.is_dir():
        return False
    if same_files(target, files):
        return True
    raise InputError(
        f"{target} already holds other files than this version has (was the MLflow registry replaced?); a "
        f"published version is never rewritten while a server may read it: publish into another repository "
        f"(-o publish.repo=...), or stop the server and remove {target}"
    )


def place_version(model_dir: Path, version: int, files: dict[str, Path]) -> None:
    """Build `<version>/` aside and rename it into place in one step."""
    with staged_dir(model_dir / str(version)) as stage:
        for name, src in files.items():
            shutil.copyfile(src, stage / name)
