"""The optimizer choice of train.optimizer=auto, and the weight average (train.ema_decay)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from components.config import TrainParams
from components.optim import AUTO_SGD_STEPS, WeightAverage, build_optimizer, choose_optimizer


@pytest.mark.parametrize(
    ("optimizer", "pretrained", "steps", "want"),
    [
        ("auto", "none", 1_000, ("adamw", 0.001)),  # short from-scratch run, 6 classes: Ultralytics' fit
        ("auto", "none", AUTO_SGD_STEPS + 1, ("sgd", 0.1)),  # a long run: PaddleX's SGD at train.learning_rate
        ("auto", "imagenet", 1_000, ("sgd", 0.1)),  # fine-tuning
        ("sgd", "none", 1_000, ("sgd", 0.1)),  # PaddleX's recipe by name
        ("adamw", "none", 1_000, ("adamw", 0.1)),
    ],
)
def test_auto_chooses_by_weights_and_length(optimizer: str, pretrained: str, steps: int, want: tuple) -> None:
    t = TrainParams(optimizer=optimizer, pretrained=pretrained, learning_rate=0.1)
    choice = choose_optimizer(t, steps, 6)
    assert (choice.name, choice.learning_rate) == want and choice.reason
    built = build_optimizer(nn.Linear(2, 2), choice, t)
    assert isinstance(built, torch.optim.AdamW if want[0] == "adamw" else torch.optim.SGD)
    assert built.param_groups[0]["lr"] == want[1]


def test_auto_learning_rate_falls_with_the_number_of_classes() -> None:
    t = TrainParams(optimizer="auto")
    rates = [choose_optimizer(t, 100, n).learning_rate for n in (2, 6, 100)]
    assert rates == sorted(rates, reverse=True) and rates[0] == pytest.approx(0.01 / 6, abs=1e-6)


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
