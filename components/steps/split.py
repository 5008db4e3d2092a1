"""split: the step that writes the split dataset (`split.output`) that train, evaluate and export read.

The split itself (seeded, stratified, duplicates kept on one side) is in `data/partition.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

from components.core.config import Params
from components.core.locks import locked
from components.core.results import StepResult
from components.data.gate import passed_check
from components.data.partition import SplitResult, split_into


@dataclass(frozen=True)
class SplitStepResult(StepResult):
    output: str
    counts: SplitResult
    resplit: bool  # split.enable: the lists were split again (else the dataset's own were kept)

    def text(self) -> str:
        how = "split again" if self.resplit else "lists kept (split.enable=false)"
        c = self.counts
        return f"Split dataset {self.output}: {c.train} train, {c.val} val, {c.classes} classes ({how})"


@locked("split.output")
def split_step(params: Params) -> SplitStepResult | None:
    """Split `dataset.dir` into `split.output` once it passes check-dataset; None when `split.output` is empty.

    Reads dataset.dir and its check result, which must be current (`sortflow split` checks first when not). Writes
    `split.output` whole: label.txt, train.txt, val.txt, the images hard-linked and split_result.json;
    dataset.dir is never modified. With `split.enable` false the dataset's own lists are kept. With
    `split.output` empty there is no separate split dataset: check-dataset resplits dataset.dir in place
    (as PaddleX) when `split.enable` is set. Raises DatasetError when the dataset fails its check.
    """
    if not params.split.output:
        return None
    passed_check(params.dataset)
    counts = split_into(params.dataset.dir, params.split.output, params.split, link=params.dataset.link)
    return SplitStepResult(params.split.output, counts, params.split.enable)
