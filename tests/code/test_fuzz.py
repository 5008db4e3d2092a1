"""Every parser of a user's file, fed arbitrary bytes and arbitrary Unicode (hypothesis): each either reads it
or ends in sortflow's own error, which names the file (and the line, where one applies) and what was found;
never a traceback, and nothing written."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.core.errors import InputError

EXAMPLES = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
# Text as editors save it, and text as anything else may: lines of printable words, and any bytes at all.
WORDS = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
LINES = st.lists(WORDS, max_size=8).map("\n".join)
BYTES = st.one_of(
    st.binary(max_size=400), LINES.map(lambda t: t.encode("utf-8")), WORDS.map(lambda t: t.encode("utf-16"))
)


def _file(folder: Path, name: str, content: bytes) -> Path:
    path = folder / name
    path.write_bytes(content)
    return path


def _names_the_file(exc: InputError, path: Path) -> None:
    assert str(path) in str(exc) or path.name in str(exc), str(exc)
    assert "\n" not in str(exc).split(":", 1)[0]


@pytest.mark.parametrize("name", ["train.txt", "label.txt"])
@EXAMPLES
@given(content=BYTES)
def test_list_and_label_files(name: str, content: bytes) -> None:
    from components.data.cls_dataset import read_labels, read_list

    with tempfile.TemporaryDirectory() as tmp:
        path = _file(Path(tmp), name, content)
        try:
            entries = read_labels(path) if name == "label.txt" else read_list(path)
        except InputError as exc:
            _names_the_file(exc, path)
            assert f"{path}:" in str(exc)  # with the line
        else:
            assert all(e.line >= 1 for e in entries)


def test_a_list_that_is_not_utf8_names_the_line_and_the_encoding(tmp_path: Path) -> None:
    from components.data.cls_dataset import read_list

    path = _file(tmp_path, "val.txt", "images/a.jpg 0\nimages/b\xe9.jpg 1\n".encode("latin-1"))
    with pytest.raises(InputError, match=rf"{path}:2: not UTF-8 text \(invalid continuation byte at byte 8\)"):
        read_list(path)


@EXAMPLES
@given(
    content=st.one_of(
        BYTES,
        st.dictionaries(WORDS, st.dictionaries(WORDS, WORDS, max_size=3), max_size=3).map(
            lambda d: json.dumps(d).encode()
        ),
    )
)
def test_params_files(content: bytes) -> None:
    from components.core.config import Params, load_params

    with tempfile.TemporaryDirectory() as tmp:
        path = _file(Path(tmp), "params.yaml", content)
        try:
            assert isinstance(load_params(path), Params)
        except InputError as exc:
            _names_the_file(exc, path)


@EXAMPLES
@given(
    key=st.sampled_from(["train.epochs", "train.learning_rate", "train.model", "train.resume", "x"]) | WORDS,
    value=WORDS,
)
def test_overrides(key: str, value: str) -> None:
    from components.core.config import Params, load_params

    with tempfile.TemporaryDirectory() as tmp:
        try:
            assert isinstance(load_params(_file(Path(tmp), "params.yaml", b""), [f"{key}={value}"]), Params)
        except InputError as exc:
            assert "override" in str(exc) or key.strip() in str(exc), str(exc)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | WORDS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            WORDS
            | st.sampled_from(["data", "annotations", "result", "value", "choices", "sortflow_file", "was_cancelled"]),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@EXAMPLES
@given(content=BYTES | JSON.map(lambda v: json.dumps(v).encode()))
def test_label_studio_exports(content: bytes) -> None:
    from components.steps.add_reviewed import read_reviewed

    with tempfile.TemporaryDirectory() as tmp:
        path = _file(Path(tmp), "export.json", content)
        try:
            read_reviewed(path)
        except InputError as exc:
            _names_the_file(exc, path)


@EXAMPLES
@given(
    content=BYTES
    | st.lists(st.lists(WORDS, max_size=4), max_size=5).map(
        lambda rows: "\n".join(",".join(r) for r in [["file", "label"], *rows]).encode()
    )
)
def test_review_csv(content: bytes) -> None:
    from components.steps.add_reviewed import read_reviewed

    with tempfile.TemporaryDirectory() as tmp:
        path = _file(Path(tmp), "review.csv", content)
        try:
            rows, _, _ = read_reviewed(path)
        except InputError as exc:
            _names_the_file(exc, path)
        else:
            assert all(r.label for r in rows)


COST_LABELS = ["glass", "metal", "paper"]
COST_WORDS = st.one_of(WORDS, st.sampled_from([*COST_LABELS, "unsure", "true", "0", "1.5", "-1", "nan", "inf"]))


@EXAMPLES
@given(
    content=BYTES
    | st.lists(st.lists(COST_WORDS, max_size=5), max_size=5).map(
        lambda rows: "\n".join(",".join(r) for r in [["true", *COST_LABELS, "unsure"], *rows]).encode()
    )
)
def test_cost_matrix(content: bytes) -> None:
    import numpy as np

    from components.model.production import read_cost_matrix

    with tempfile.TemporaryDirectory() as tmp:
        path = _file(Path(tmp), "costs.csv", content)
        try:
            costs = read_cost_matrix(path, COST_LABELS)
        except InputError as exc:
            _names_the_file(exc, path)
        else:
            assert costs.shape == (3, 4) and np.isfinite(costs).all() and (costs >= 0).all()


FOLDER_NAMES = st.lists(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), min_size=1, max_size=30).filter(
        lambda n: n not in (".", "..") and len(n.encode()) < 200
    ),
    min_size=1,
    max_size=3,
    unique=True,
)


@settings(max_examples=200, deadline=None, database=None)
@given(names=FOLDER_NAMES)
def test_imagefolder_names(names: list[str]) -> None:
    """A class folder may be named anything the file system takes: it becomes a class (a hidden one, such as
    .ipynb_checkpoints, is skipped), or the conversion stops naming the folder, before anything is written."""
    from PIL import Image

    from components.core.config import SplitParams
    from components.data.cls_dataset import label_names
    from components.steps.convert import convert_folders

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "src", Path(tmp) / "dst"
        for name in names:
            (src / name).mkdir(parents=True, exist_ok=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (i * 90, 0, 0)).save(src / name / f"{i}.png")
        try:
            convert_folders(src, dst, SplitParams(enable=True, train_percent=50, val_percent=50, seed=1))
        except InputError as exc:
            assert not dst.exists()
            assert any(name in str(exc) or repr(name)[1:-1] in str(exc) for name in names), str(exc)
        else:
            assert sorted(label_names(dst / "label.txt").values()) == sorted(n for n in names if not n.startswith("."))
