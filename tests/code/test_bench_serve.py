"""bench-serve's pieces that need no server: percentiles, the images it sends, its arguments."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.cli import main
from components.core.errors import SortflowError
from components.steps.bench_serve import image_files, percentile


def test_nearest_rank_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]
    assert [percentile(values, p) for p in (0.5, 0.95, 0.99, 1.0)] == [50.0, 95.0, 99.0, 100.0]
    assert percentile([7.0], 0.99) == 7.0


def test_image_files_searches_folders_and_names_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/1.jpg", "a/b/2.PNG", "a/notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in image_files((str(tmp_path / "a"),))] == ["1.jpg", "2.PNG"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(SortflowError, match="no image files"):
        image_files((str(tmp_path / "empty"),))
    with pytest.raises(SortflowError, match="no such file or folder"):
        image_files((str(tmp_path / "missing"),))


def test_concurrency_levels_must_be_positive_integers(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench-serve", "--concurrency", "1,x"])
    assert exit_info.value.code == 2 and "positive integers separated by commas" in capsys.readouterr().err
