"""check-dataset: the step that checks `dataset.dir` before anything reads it.

The checks themselves (PaddleX's check_dataset as a Great Expectations suite) are in `dataset_checks`.
As PaddleX's check_dataset with `split.enable`, the step first resplits the dataset's lists in place when
there is no separate split dataset (`split.output` empty), so the check covers the lists training reads.
"""

from __future__ import annotations

from dataclasses import dataclass

from components.core.config import Params
from components.core.locks import locked
from components.data.expectations import CheckReport, check_dataset
from components.data.partition import SplitResult, split_dataset


@dataclass(frozen=True)
class CheckOutcome:
    report: CheckReport
    resplit: SplitResult | None  # the in-place split done first, if any


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
    return CheckOutcome(check_dataset(params.dataset), resplit)
