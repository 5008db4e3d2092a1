"""DVC around the datasets: a folder tracked by `<folder>.dvc` is versioned data (pull, commit, its hash)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from components.core.errors import ServiceError
from components.core.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)


def dvc_file_for(folder: str | Path) -> Path | None:
    """`<folder>.dvc` beside the folder, if it exists inside a DVC repository."""
    folder = Path(folder).resolve()
    dvc_file = folder.parent / f"{folder.name}.dvc"
    if not dvc_file.is_file():
        return None
    if not any((p / ".dvc").is_dir() for p in [folder.parent, *folder.parent.parents]):
        return None
    return dvc_file


def _dvc(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True)


def _remote(cwd: Path) -> str:
    """'NAME (url URL)' of the default DVC remote, for error messages."""
    name = _dvc(["config", "core.remote"], cwd).stdout.strip()
    if not name:
        return "no default remote (set one with `dvc remote add -d NAME URL`)"
    url = _dvc(["config", f"remote.{name}.url"], cwd).stdout.strip()
    return f"remote {name!r} (url {url}; change it with `dvc remote modify {name} url URL`)"


def pull(folder: str | Path) -> str:
    """Make `folder` match its `.dvc` file, pulling from the DVC remote only when the workspace differs.

    Returns what was done. A folder without a `.dvc` file is used as it is.
    """
    dvc_file = dvc_file_for(folder)
    if dvc_file is None:
        return f"{folder} is not tracked by DVC (no {Path(folder).name}.dvc); used as it is"
    cwd = dvc_file.parent
    status = _dvc(["status", "--json", dvc_file.name], cwd)
    if status.returncode == 0 and status.stdout.strip() in ("{}", ""):
        return f"{folder} matches {dvc_file.name} and the cache; nothing to pull"
    run = _dvc(["pull", dvc_file.name], cwd)
    if run.returncode != 0:
        said = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith(("ERROR", "WARNING"))]
        raise ServiceError(
            f"dvc pull {dvc_file.name} failed ({' '.join(said) or f'exit {run.returncode}'}); "
            f"the data comes from the {_remote(cwd)}"
        )
    return f"pulled {folder} from the {_remote(cwd)}"


def commit_if_unchanged(folder: str | Path) -> bool:
    """Put a rebuilt folder into the DVC cache if it is exactly what its `.dvc` file records.

    After a fresh clone the cache is empty and `dvc status` reports the data as "not in cache" even
    when it was rebuilt byte for byte; committing fills the cache, so status is clean and `dvc push`
    works. If the content differs, the `.dvc` file is left as it was and False is returned.
    """
    dvc_file = dvc_file_for(folder)
    if dvc_file is None:
        return False
    recorded = dvc_file.read_bytes()
    run = _dvc(["commit", "--force", "--quiet", dvc_file.name], dvc_file.parent)
    if run.returncode != 0:
        log.warning("dvc commit %s failed: %s", dvc_file, run.stderr.strip() or run.stdout.strip())
        return False
    if dvc_file.read_bytes() != recorded:
        atomic_write_bytes(dvc_file, recorded)
        log.warning(
            "%s differs from what %s records; the .dvc file is unchanged (run `dvc add %s` to track the new content)",
            folder,
            dvc_file.name,
            Path(folder).name,
        )
        return False
    log.info("%s matches %s and is in the DVC cache", folder, dvc_file.name)
    return True


def dvc_md5(folder: str | Path) -> str | None:
    """The content hash that `<folder>.dvc` records for the folder (DVC's md5 of its listing), if tracked."""
    import yaml

    dvc_file = dvc_file_for(folder)
    if dvc_file is None:
        return None
    outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or [{}]
    return outs[0].get("md5") or None


def add(folder: str | Path) -> Path | None:
    """`dvc add` a folder that `<folder>.dvc` already tracks, so the .dvc file records its new content.

    Returns the .dvc file, or None when the folder is not tracked. A failing `dvc add` is a ServiceError
    naming what DVC said (it is the DVC cache or repository that failed, not the data).
    """
    dvc_file = dvc_file_for(folder)
    if dvc_file is None:
        return None
    run = _dvc(["add", "--quiet", Path(folder).resolve().name], dvc_file.parent)
    if run.returncode != 0:
        raise ServiceError(f"dvc add {Path(folder).name} failed: {(run.stderr or run.stdout).strip()}")
    return dvc_file
