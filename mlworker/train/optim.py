"""What a stage trains, its optimizer and its learning-rate schedule.

The schedule is a torch ``lr_scheduler`` stepped once per epoch, as in torchvision's
classification reference: ``LinearLR`` for ``--warmup-epochs``, then ``CosineAnnealingLR``
(``--lr-schedule cosine``) or the step schedule. Its state goes into the resume file with
the optimizer's.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    LambdaLR,
    LinearLR,
    LRScheduler,
    SequentialLR,
)

from mlworker.model import WBCClassifier
from mlworker.train.config import TrainConfig

SCOPES: tuple[str, ...] = ("head", "layer4", "all")


def set_scope(model: WBCClassifier, scope: str) -> list[nn.Parameter]:
    """Make only ``scope`` trainable and return its parameters.

    "head": the fully connected layer; "layer4": the backbone's last stage and the head
    (the name is ResNet's, kept for old commands and jobs: the model says what its last
    stage is, ``last_stage_modules``, for every family); "all": everything.
    """
    if scope not in SCOPES:
        raise ValueError(f"unknown training scope {scope!r}")
    for p in model.parameters():
        p.requires_grad_(scope == "all")
    trainable = list(model.head_parameters())
    if scope == "layer4":
        trainable += [p for m in model.last_stage_modules() for p in m.parameters()]
    for p in trainable:
        p.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def train_mode(model: WBCClassifier, scope: str) -> None:
    """Train mode for the trained part only: frozen BatchNorm statistics stay frozen."""
    model.train()
    if scope != "all":
        model.backbone.eval()
    if scope == "layer4":
        for module in model.last_stage_modules():
            module.train()


def make_optimizer(
    params: list[nn.Parameter], config: TrainConfig, lr: float
) -> torch.optim.Optimizer:
    """AdamW or SGD with momentum; BatchNorm weights and biases get no weight decay."""
    decay = [p for p in params if p.dim() > 1]
    no_decay = [p for p in params if p.dim() <= 1]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=config.momentum)


def lr_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, epochs: int) -> LRScheduler:
    """The learning rate of each epoch of a stage of ``epochs`` epochs; step it per epoch.

    Warmup epoch e (0-based) runs at (e + 1) / (warmup + 1) of the base rate. Cosine anneals
    over the epochs after the warmup (never reaching 0 within the stage). The step schedule
    multiplies by ``--lr-gamma`` every ``--lr-step`` epochs counted from the stage's first
    epoch, warmup included; torch's ``StepLR`` would restart its count after the warmup and
    compounds the factor epoch by epoch, so its rates drift from ``gamma ** k`` in the last
    bits. ``LambdaLR`` gives exactly ``base_lr * gamma ** k``, the rates of earlier versions,
    so a seeded default run still ends with the same weights.
    """
    warmup = config.warmup_epochs
    main: LRScheduler
    if config.lr_schedule == "cosine":
        main = CosineAnnealingLR(optimizer, T_max=max(1, epochs - warmup))
    else:
        gamma, step = config.lr_gamma, config.lr_step
        main = LambdaLR(optimizer, lambda epoch: gamma ** ((epoch + warmup) // step))
    if not warmup:
        return main
    ramp = LinearLR(optimizer, start_factor=1 / (warmup + 1), end_factor=1.0, total_iters=warmup)
    return SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The rate the next step uses (the same in every parameter group)."""
    return float(optimizer.param_groups[0]["lr"])
