"""check-dataset: the step that checks `dataset.dir` before anything reads it.

The checks themselves (PaddleX's check_dataset as a Great Expectations suite) are in `data/expectations.py`,
over the manifest of `data/manifest.py`; `data/report.py` writes what they found. As PaddleX's
check_dataset with `split.enable`, the step first resplits the dataset's lists in place when there is no
separate split dataset (`split.output` empty), so the check covers the lists training reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from components.core.config import Params
from components.core.locks import locked
from components.core.results import StepResult
from components.data.gate import current_result
from components.data.partition import SplitResult, split_dataset

if TYPE_CHECKING:  # the report code (pandas, the suite) loads only when a check runs: train starts without it
    from components.data.report import CheckReport


@dataclass(frozen=True)
class CheckOutcome(StepResult):
    report: CheckReport
    resplit: SplitResult | None  # the in-place split done first, if any
    data_docs: str  # the Great Expectations Data Docs page

    def text(self) -> str:
        from components.data.report import format_report

        return ("Split dataset successfully !\n" if self.resplit else "") + format_report(self.report)

    def to_json(self) -> dict[str, Any]:
        return self.report.result  # check_dataset_result.json, in PaddleX's shape

    @property
    def exit_code(self) -> int:
        return 0 if self.report.check_pass else 1


@locked("dataset.output")
def check_step(params: Params) -> CheckOutcome:
    """Check `dataset.dir`; with `split.enable` and an empty `split.output`, resplit its lists in place first.

    Reads dataset.dir (label.txt, train.txt, val.txt and the listed images). Writes
    `dataset.output/check_dataset_result.json` and `dataset.output/check_dataset/` (and, when it resplits,
    new train.txt and val.txt with the originals kept as .bak). Raises DatasetError for a dataset that
    cannot be read at all; a dataset that fails a check is reported (`report.check_pass` false), not raised.
    """
    resplit = None
    if params.split.enable and not params.split.output:
        resplit = split_dataset(params.dataset.dir, params.split)
    return _outcome(params, resplit)


def check_if_needed(params: Params) -> CheckOutcome | None:
    """check-dataset when `dataset.dir` has no check result newer than its lists (what `sortflow train` and
    `sortflow split` do first, as their gate only reads that result); None when the result is current."""
    return None if current_result(params.dataset) is not None else _check_only(params)


@locked("dataset.output")
def _check_only(params: Params) -> CheckOutcome:
    return _outcome(params, None)


def _outcome(params: Params, resplit: SplitResult | None) -> CheckOutcome:
    from components.data.report import data_docs_index, run_check

    return CheckOutcome(run_check(params.dataset), resplit, str(data_docs_index(params.dataset)))
