"""Weight averaging (``--ema-decay``): torch's ``AveragedModel`` with a bias-corrected EMA.

``AveragedModel(..., use_buffers=True)`` averages BatchNorm's running statistics along
with the weights, so the averaged model is evaluated with statistics that belong to its
own weights. torch's ``get_ema_multi_avg_fn`` weighs step t by (1 - d) d^(T-t) and gives
the first copy the remaining d^(T-1); ``bias_corrected_ema`` instead normalises those
weights over the steps seen (as Adam does its moments), so with few steps per stage the
first step does not dominate. Integer buffers (BatchNorm's batch counter) are copied.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

ParamList = tuple[Tensor, ...] | list[Tensor]
MultiAvgFn = Callable[[ParamList, ParamList, Tensor | int], None]


def bias_corrected_ema(decay: float) -> MultiAvgFn:
    """An ``AveragedModel`` ``multi_avg_fn``: avg_t = avg_{t-1} + s_t (x_t - avg_{t-1}).

    s_t = (1 - d) / (1 - d^t) for the t-th update; ``AveragedModel`` itself copies the
    model at t = 1 (s_1 = 1) and passes the number of earlier updates (t - 1).
    """
    if not 0 < decay < 1:
        raise ValueError(f"decay must be in (0, 1), got {decay}")

    @torch.no_grad()  # type: ignore[untyped-decorator]
    def update(averaged: ParamList, current: ParamList, n_averaged: Tensor | int) -> None:
        if not (averaged[0].is_floating_point() or averaged[0].is_complex()):
            for average, value in zip(averaged, current, strict=True):
                average.copy_(value)
            return
        t = int(n_averaged) + 1  # the loop syncs on the loss every step anyway
        torch._foreach_lerp_(averaged, current, (1 - decay) / (1 - decay**t))

    return update


def weight_average(model: nn.Module, decay: float) -> AveragedModel:
    """A copy of ``model`` whose weights and BatchNorm buffers track its bias-corrected EMA."""
    average = AveragedModel(model, multi_avg_fn=bias_corrected_ema(decay), use_buffers=True)
    average.module.zero_grad(set_to_none=True)  # deepcopy copied the last step's gradients
    return average


def averaged_state(average: AveragedModel) -> dict[str, Tensor]:
    """The averaged model's state dict, loadable into the model it was made from."""
    module: nn.Module = average.module
    return module.state_dict()


def average_steps(average: AveragedModel) -> int:
    return int(average.n_averaged)  # type: ignore[arg-type]
