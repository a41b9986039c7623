"""One training epoch and the prediction passes, as torchvision's ``train_one_epoch``/``evaluate``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader

from mlworker.calibration import softmax_with_temperature
from mlworker.data import CellImages, Sample, collate_cells
from mlworker.device import Runtime
from mlworker.evaluate import evaluation_report, scored_report
from mlworker.model import Checkpoint, WBCClassifier
from mlworker.presets import EvalPreset, to_uint8_tensor, tta_views
from mlworker.train.batches import Batch, PreparedImages, input_normalization, workers_for
from mlworker.train.config import TrainConfig
from mlworker.train.optim import train_mode
from mlworker.train.progress import EpochMeter, EpochStats


def train_one_epoch(
    model: WBCClassifier,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    runtime: Runtime,
    meter: EpochMeter,
    *,
    scope: str,
    average: AveragedModel | None = None,
    train_size: int | None = None,
    on_errors: Callable[[dict[int, str]], None] | None = None,
) -> EpochStats:
    """Train ``scope`` of ``model`` on ``batches`` once; ``average`` is updated every step.

    ``train_size``: resize the batches to that many pixels on the fly (low-res epochs).
    """
    train_mode(model, scope)
    with meter:
        for images, labels, errors in meter.track(batches):
            if errors and on_errors is not None:
                on_errors(errors)
            if len(labels) == 0 or (len(labels) == 1 and scope != "head"):
                continue  # BatchNorm cannot train on a single image (a last, short batch)
            x = runtime.prepare_batch(images)
            if train_size is not None and x.shape[-1] != train_size:
                x = F.interpolate(
                    x, size=(train_size, train_size), mode="bilinear", antialias=True
                ).contiguous(memory_format=torch.channels_last)
            y = labels.to(runtime.device, non_blocking=True)
            with runtime.autocast():
                logits = _logits(model, x, scope)
                loss = criterion(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            if average is not None:
                average.update_parameters(model)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss is {loss.item()}; lower --lr")
            meter.update(loss, logits, y)
    return meter.stats()


def _logits(model: WBCClassifier, x: torch.Tensor, scope: str) -> torch.Tensor:
    if scope != "head":
        return model(x)  # type: ignore[no-any-return]
    with torch.no_grad():  # the frozen backbone needs no graph
        features = model.backbone(x)
    return model.fc(features)  # type: ignore[no-any-return]


def predict_logits(
    model: WBCClassifier,
    data: PreparedImages,
    config: TrainConfig,
    runtime: Runtime,
    heartbeat: Callable[[], None] | None = None,
    tta: str = "none",
) -> tuple[torch.Tensor, torch.Tensor, dict[str, str]]:
    """(logits (N, C) float32, labels, newly unreadable) for the readable images of ``data``.

    ``tta``: logits averaged over those views of each image, as ``Scorer`` does for a
    checkpoint trained with ``--tta``.
    """
    preset = EvalPreset(config.image_size, *input_normalization(config), crop=config.crop, tta=tta)
    model.eval()
    out_logits: list[torch.Tensor] = []
    out_labels: list[torch.Tensor] = []
    unreadable: dict[str, str] = {}
    if data.images is not None:
        batches: Iterator[tuple[torch.Tensor, torch.Tensor]] = (
            (data.images[i : i + 128], data.labels[i : i + 128])
            for i in range(0, len(data.labels), 128)
        )
    else:

        def from_files() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            loader = DataLoader(
                CellImages(data.samples, transform=lambda im: preset.resize(to_uint8_tensor(im))),
                batch_size=64,
                num_workers=workers_for(config),
                collate_fn=collate_cells,
            )
            for batch in loader:
                for index, error in (batch.errors or {}).items():
                    unreadable[str(data.samples[index].path)] = error
                if batch.images is not None:
                    yield batch.images, batch.labels

        batches = from_files()
    with torch.inference_mode(), runtime.autocast():
        for images, labels in batches:
            x = preset.normalize(runtime.prepare_batch(images))
            views = tta_views(x, preset.tta)
            out_logits.append(torch.stack([model(v).float() for v in views]).mean(0).cpu())
            out_labels.append(labels)
            if heartbeat is not None:
                heartbeat()
    if not out_logits:
        raise ValueError("no readable validation image")
    return torch.cat(out_logits), torch.cat(out_labels), unreadable


def report_for(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
) -> dict[str, Any]:
    """The evaluation JSON (accuracy, balanced accuracy, per class, ...) of these logits."""
    probabilities = softmax_with_temperature(logits, temperature).double().numpy()
    return evaluation_report(labels.numpy(), probabilities)


def evaluate_samples(
    checkpoint: Checkpoint,
    samples: Sequence[Sample],
    *,
    batch_size: int = 64,
    runtime: Runtime | None = None,
) -> dict[str, Any]:
    """The evaluation JSON of ``checkpoint`` (its own temperature) on labelled ``samples``."""
    from mlworker.score import Scorer, score_labelled

    scorer = Scorer(checkpoint, runtime=runtime)
    scored = score_labelled(scorer, samples, batch_size=batch_size, num_workers=0)
    return scored_report(scored, scorer)
