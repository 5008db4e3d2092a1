"""The optimizer of train.optimizer, and the weight average (train.ema_decay)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from components.core.config import TrainParams
from components.model.optim import WeightAverage, build_optimizer


@pytest.mark.parametrize(("name", "kind"), [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)])
def test_the_optimizer_is_the_one_named_at_the_learning_rate(name: str, kind: type) -> None:
    built = build_optimizer(nn.Linear(2, 2), TrainParams(optimizer=name, learning_rate=0.05))
    assert isinstance(built, kind) and len(built.param_groups) == 1 and built.param_groups[0]["lr"] == 0.05


def test_weight_average_follows_the_weights_with_a_ramped_decay() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    average = WeightAverage(model, decay=0.9998)
    start = average.model[0].weight.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].num_batches_tracked.fill_(7)
    average.update(model)  # first update keeps (1 + 1) / (10 + 1) of the old weights
    assert torch.allclose(average.model[0].weight, start + 9 / 11, atol=1e-6)
    assert average.model[1].num_batches_tracked.item() == 7  # integer buffers are copied, not averaged
    for _ in range(2000):
        average.update(model)
    assert torch.allclose(average.model[0].weight, model[0].weight, atol=1e-4)
    assert not any(p.requires_grad for p in average.model.parameters())
    assert average.updates == 2001
