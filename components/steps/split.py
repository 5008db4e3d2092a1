"""split: the step that writes the split dataset (`split.output`) that train, evaluate and export read.

The split itself (seeded, stratified, duplicates kept on one side) is in `data/partition.py`.
"""

from __future__ import annotations

from components.core.config import Params
from components.core.locks import locked
from components.data.gate import passed_check
from components.data.partition import SplitResult, split_into


@locked("split.output")
def split_step(params: Params) -> SplitResult | None:
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
    return split_into(params.dataset.dir, params.split.output, params.split, link=params.dataset.link)
