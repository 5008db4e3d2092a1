"""The optimizer, its learning-rate schedule and the weight average that training uses.

`train.optimizer=auto` chooses as Ultralytics does for short runs: a model trained from scratch for at most
AUTO_SGD_STEPS steps gets AdamW at a learning rate fitted to the number of classes (SGD at a high rate
swings a small from-scratch run by 10 points of val top-1 from epoch to epoch); a fine-tuned model, and a
long run, get PaddleX's SGD with momentum at `train.learning_rate`. `sgd` and `adamw` name one recipe.

The exponential moving average of the weights (`train.ema_decay`) is what is validated and saved: it
smooths the last steps' noise, the way timm's ModelEmaV3 and Ultralytics' ModelEMA do.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from components.config import TrainParams

AUTO_SGD_STEPS = 10_000  # Ultralytics: above this many steps, SGD


@dataclass(frozen=True)
class OptimizerChoice:
    name: str  # sgd or adamw
    learning_rate: float
    reason: str


def choose_optimizer(t: TrainParams, total_steps: int, num_classes: int) -> OptimizerChoice:
    """What `train.optimizer` means for this run; `auto` says why it chose what it chose."""
    if t.optimizer != "auto":
        return OptimizerChoice(t.optimizer, t.learning_rate, f"train.optimizer={t.optimizer}")
    if t.pretrained != "none":
        return OptimizerChoice("sgd", t.learning_rate, "auto: fine-tuning pretrained weights, PaddleX's SGD")
    if total_steps > AUTO_SGD_STEPS:
        return OptimizerChoice("sgd", t.learning_rate, f"auto: from scratch, {total_steps} steps > {AUTO_SGD_STEPS}")
    rate = round(0.002 * 5 / (4 + num_classes), 6)  # Ultralytics' fit for short runs
    return OptimizerChoice(
        "adamw",
        rate,
        f"auto: from scratch, {total_steps} steps <= {AUTO_SGD_STEPS}, lr fitted to {num_classes} classes",
    )


def build_optimizer(model: nn.Module, choice: OptimizerChoice, t: TrainParams) -> torch.optim.Optimizer:
    """One parameter group, weight decay on every tensor, as PaddleX's Momentum with L2 regularization;
    timm's optimizer factory (Nesterov, split groups) measured 7-10% slower per step on the CPU."""
    if choice.name == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=choice.learning_rate, momentum=t.momentum, weight_decay=t.weight_decay
        )
    return torch.optim.AdamW(model.parameters(), lr=choice.learning_rate, weight_decay=t.weight_decay)


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup to the peak learning rate, then cosine decay to zero."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class WeightAverage:
    """An exponential moving average of a model's weights and BatchNorm statistics.

    The decay ramps up as (1 + n) / (10 + n) after n updates, capped at `decay`, so a short run averages
    over roughly its last tenth of steps and a long one over about 1 / (1 - decay) steps.
    """

    def __init__(self, model: nn.Module, decay: float, updates: int = 0) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.updates = decay, updates

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        keep = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for mine, theirs in zip(self.model.state_dict().values(), model.state_dict().values(), strict=True):
            if mine.dtype.is_floating_point:
                mine.lerp_(theirs, 1 - keep)
            else:  # BatchNorm's step counters
                mine.copy_(theirs)
