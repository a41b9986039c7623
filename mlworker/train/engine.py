"""The training stages: head, fine-tune, weak-class pass, temperature scaling.

``fit(train, val, config)`` runs on lists the caller has already split; it never re-splits.
It writes nothing unless given ``state_path`` (the CLI's ``--resume`` file, written
atomically after every epoch). A ``progress`` callback that raises stops it at once.

Stages (see mlworker/training.md):
1. ``head``: only ``model.fc`` trains; the backbone is frozen and kept in eval mode, so
   neither its weights nor its BatchNorm statistics change.
2. ``finetune``: ``layer4`` + head (the default), or the whole network (``all``).
3. ``weak``: classes with validation TPR below the threshold get a targeted pass: a freshly
   initialised head and ``layer4`` retrain with those classes oversampled; the result is
   kept only if validation balanced accuracy does not fall.
4. ``calibrate``: temperature scaling on the validation logits.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mlworker import taxonomy
from mlworker.calibration import calibrate, softmax_with_temperature
from mlworker.data import CellImages, Sample, collate_cells
from mlworker.device import Runtime, choose_runtime
from mlworker.evaluate import evaluation_report
from mlworker.metrics import weak_classes
from mlworker.model import (
    Checkpoint,
    WBCClassifier,
    build_classifier,
    make_checkpoint,
)
from mlworker.presets import EvalPreset, TrainPreset, to_uint8_tensor, tta_views
from mlworker.train.config import TrainConfig
from mlworker.train.splits import class_counts

logger = logging.getLogger(__name__)

ProgressFn = Callable[[dict[str, Any]], None]
STAGES: tuple[str, ...] = ("head", "finetune", "weak", "calibrate")
STATE_FORMAT = "wbc-train-state/1"
CODES = taxonomy.CODES


# --- data ------------------------------------------------------------------------------


@dataclass
class PreparedImages:
    """The readable images of a split: decoded once (``images``) or read every epoch."""

    samples: list[Sample]
    labels: torch.Tensor
    images: torch.Tensor | None  # uint8 (N, 3, S, S) when cached
    unreadable: dict[str, str]


def _default_workers() -> int:
    """Decode workers for images read from files (cached images need none)."""
    cores = os.cpu_count() or 1
    return max(1, min(8, cores // 2)) if torch.cuda.is_available() else max(1, cores // 4)


def prepare_images(
    samples: Sequence[Sample],
    config: TrainConfig,
    *,
    heartbeat: Callable[[], None] | None = None,
) -> PreparedImages:
    """Decode and resize every image once when the set fits in ``config.cache_mb``.

    An unreadable image is reported once (logged and listed) and left out.
    """
    samples = list(samples)
    size = config.image_size
    need_mb = len(samples) * 3 * size * size / 2**20
    if need_mb > config.cache_mb:
        labels = torch.tensor([s.label for s in samples], dtype=torch.long)
        return PreparedImages(samples, labels, None, {})
    resize = EvalPreset(size, crop=config.crop).resize
    dataset = CellImages(samples, transform=lambda image: resize(to_uint8_tensor(image)))
    workers = config.workers if config.workers is not None else _default_workers()
    workers = workers if len(samples) > 64 else 0
    loader = DataLoader(
        dataset,
        batch_size=64,
        num_workers=workers,
        collate_fn=collate_cells,
        prefetch_factor=2 if workers else None,
    )
    images = torch.empty((len(samples), 3, size, size), dtype=torch.uint8)
    ok = torch.zeros(len(samples), dtype=torch.bool)
    unreadable: dict[str, str] = {}
    for batch in loader:
        for index, error in (batch.errors or {}).items():
            unreadable[str(samples[index].path)] = error
            logger.warning("unreadable image left out: %s (%s)", samples[index].path, error)
        if batch.indices:
            assert batch.images is not None
            images[batch.indices] = batch.images
            ok[batch.indices] = True
        if heartbeat is not None:
            heartbeat()
    keep = ok.nonzero().flatten()
    kept = [samples[i] for i in keep.tolist()]
    labels = torch.tensor([s.label for s in kept], dtype=torch.long)
    return PreparedImages(
        kept, labels, images[keep].clone() if len(keep) < len(ok) else images, unreadable
    )


def _class_weights(labels: torch.Tensor, power: float) -> torch.Tensor:
    """Per-class weight n_c^-power (0 for absent classes), mean 1 over the samples."""
    counts = torch.bincount(labels, minlength=len(CODES)).double()
    weights = torch.where(counts > 0, counts.clamp_min(1).pow(-power), torch.zeros_like(counts))
    mean_over_samples = (weights[labels]).mean()
    return (weights / mean_over_samples).float()


def sample_weights(
    labels: torch.Tensor, power: float, sources: Sequence[str] | None = None
) -> torch.Tensor:
    """Sampling weight per sample: class c weighs n_c^(1-power) in total (1: balanced).

    With ``sources`` (one name per sample), each source present in a class gets an equal
    share of that class's weight, so a hospital that contributed 40 eosinophils counts as
    much as one that contributed 280: its stain and scanner are learnt, not drowned out.
    """
    per_class = _class_weights(labels, power).double()
    weights = per_class[labels]
    if sources is None:
        return weights
    if len(sources) != len(labels):
        raise ValueError(f"{len(sources)} source names for {len(labels)} samples")
    group_size: dict[tuple[str, int], int] = {}
    for source, label in zip(sources, labels.tolist(), strict=True):
        group_size[(source, label)] = group_size.get((source, label), 0) + 1
    sources_in_class: dict[int, int] = {}
    for _, label in group_size:
        sources_in_class[label] = sources_in_class.get(label, 0) + 1
    class_size = torch.bincount(labels, minlength=len(CODES)).tolist()
    share = torch.tensor(
        [
            class_size[label] / (sources_in_class[label] * group_size[(source, label)])
            for source, label in zip(sources, labels.tolist(), strict=True)
        ],
        dtype=torch.float64,
    )
    return weights * share


def _epoch_seed(seed: int, stage: str, epoch: int) -> int:
    """Each epoch's randomness depends only on (seed, stage, epoch): resumable exactly."""
    return (seed * 1_000_003 + STAGES.index(stage) * 10_007 + epoch) % (2**63)


# --- model -----------------------------------------------------------------------------


def set_scope(model: WBCClassifier, scope: str) -> list[nn.Parameter]:
    """Make only ``scope`` ("head", "layer4", "all") trainable; return its parameters."""
    if scope not in ("head", "layer4", "all"):
        raise ValueError(f"unknown training scope {scope!r}")
    for p in model.parameters():
        p.requires_grad_(scope == "all")
    trainable: list[nn.Module] = [model.fc]
    if scope == "layer4":
        trainable.append(model.backbone.layer4)
    for module in trainable:
        for p in module.parameters():
            p.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def train_mode(model: WBCClassifier, scope: str) -> None:
    """Train mode for the trained part only: frozen BatchNorm statistics stay frozen."""
    model.train()
    if scope != "all":
        model.backbone.eval()
    if scope == "layer4":
        model.backbone.layer4.train()


def initial_model(
    config: TrainConfig, init_checkpoint: Checkpoint | None
) -> tuple[WBCClassifier, str]:
    """The model to start from and a line saying where its weights came from."""
    if init_checkpoint is not None and config.init_from_checkpoint:
        if init_checkpoint["arch"] != config.arch:
            raise ValueError(
                f"--arch {config.arch} differs from the starting checkpoint's "
                f"{init_checkpoint['arch']}; pass --from-scratch to train a new architecture"
            )
        model = WBCClassifier(torchvision.models.get_model(config.arch, weights=None), len(CODES))
        model.load_state_dict(init_checkpoint["model"])  # a copy: the caller's stays intact
        return model, f"{config.arch} from the given checkpoint (backbone and head)"
    weights = config.weights
    if weights.lower() == "none":
        return build_classifier(config.arch, len(CODES), None), f"{config.arch} random init"
    if weights == "imagenet":
        try:
            model = build_classifier(config.arch, len(CODES), "imagenet")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}, or --weights none for random initialisation") from exc
        return model, f"{config.arch} ImageNet weights"
    return build_classifier(config.arch, len(CODES), weights), f"{config.arch} weights {weights}"


def _optimizer(params: list[nn.Parameter], config: TrainConfig, lr: float) -> torch.optim.Optimizer:
    decay = [p for p in params if p.dim() > 1]
    no_decay = [p for p in params if p.dim() <= 1]  # BatchNorm and biases: no weight decay
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=config.momentum)


def lr_at(config: TrainConfig, base_lr: float, epoch: int, epochs: int) -> float:
    """Learning rate of (0-based) ``epoch`` of a stage of ``epochs`` epochs."""
    if epoch < config.warmup_epochs:
        return base_lr * (epoch + 1) / (config.warmup_epochs + 1)
    if config.lr_schedule == "cosine":
        span = max(1, epochs - config.warmup_epochs)
        return base_lr * 0.5 * (1 + math.cos(math.pi * (epoch - config.warmup_epochs) / span))
    return base_lr * config.lr_gamma ** (epoch // config.lr_step)


class WeightAverage:
    """Exponential moving average of a model's whole state: weights and BatchNorm buffers.

    Bias-corrected like Adam's moments, so the average is over the steps it has seen
    (the first update copies the model) and the weights it started from count for
    nothing. Integer buffers (BatchNorm's batch counter) are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        # avg_t = avg_{t-1} + (1 - d) / (1 - d^t) * (x_t - avg_{t-1})
        step = (1 - self.decay) / (1 - self.decay**self.updates)
        for key, value in model.state_dict().items():
            average = self.state[key]
            if average.is_floating_point():
                average.lerp_(value.detach(), step)
            else:
                average.copy_(value)

    def state_dict(self) -> dict[str, Any]:
        return {
            "decay": self.decay,
            "updates": self.updates,
            "state": {k: v.detach().cpu() for k, v in self.state.items()},
        }

    def load_state_dict(self, saved: Mapping[str, Any]) -> None:
        self.decay = float(saved["decay"])
        self.updates = int(saved["updates"])
        for key, value in saved["state"].items():
            self.state[key].copy_(value)


# --- one epoch -------------------------------------------------------------------------


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    n: int


def _batches_for_training(
    data: PreparedImages,
    order: torch.Tensor,
    config: TrainConfig,
    generator: torch.Generator,
    skip: set[int],
) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict[int, str]]]:
    """(images, labels, errors by dataset index) for one epoch in ``order``."""
    preset = TrainPreset(
        config.image_size,
        hflip_prob=config.hflip_prob,
        vflip_prob=config.vflip_prob,
        rotate90=config.rotate90,
        color_jitter=config.color_jitter,
        crop=config.crop,
        stain_jitter=config.stain_jitter,
    )
    indices = [i for i in order.tolist() if i not in skip]
    if data.images is not None:  # cropped and resized already: augment whole batches
        for start in range(0, len(indices), config.batch_size):
            chosen = torch.tensor(indices[start : start + config.batch_size], dtype=torch.long)
            yield preset.augment_batch(data.images[chosen], generator), data.labels[chosen], {}
        return
    dataset: Dataset[dict[str, Any]] = CellImages(data.samples, transform=preset)
    workers = config.workers if config.workers is not None else _default_workers()
    loader = DataLoader(
        torch.utils.data.Subset(dataset, indices),
        batch_size=config.batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_cells,
        generator=generator,
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
    )
    for batch in loader:
        # Subset re-indexes from 0; the entries carry the dataset's own index
        errors = dict(batch.errors or {})
        if batch.images is None:
            yield torch.empty(0), torch.empty(0, dtype=torch.long), errors
            continue
        yield batch.images, batch.labels, errors


def train_one_epoch(
    model: WBCClassifier,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor, dict[int, str]]],
    n_batches: int,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    runtime: Runtime,
    scope: str,
    *,
    on_errors: Callable[[dict[int, str]], None],
    heartbeat: Callable[[float, float, float], None],
    bar_desc: str | None,
    average: WeightAverage | None = None,
    train_size: int | None = None,
) -> EpochStats:
    train_mode(model, scope)
    total_loss, correct, seen = 0.0, 0, 0
    bar = None
    if bar_desc is not None:
        from tqdm import tqdm

        bar = tqdm(
            total=n_batches,
            desc=bar_desc,
            unit="batch",
            leave=True,
            dynamic_ncols=True,
            mininterval=1.0 if sys.stderr.isatty() else 30.0,
            file=sys.stderr,
        )
    try:
        for done, (images, labels, errors) in enumerate(batches, start=1):
            if errors:
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
                if scope == "head":
                    with torch.no_grad():
                        features = model.backbone(x)
                    logits = model.fc(features)
                else:
                    logits = model(x)
                loss = criterion(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            if average is not None:
                average.update(model)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss is {loss.item()}; lower --lr")
            total_loss += float(loss.detach()) * len(y)
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += len(y)
            if bar is not None:
                bar.set_postfix(
                    loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False
                )
                bar.update(1)
            heartbeat(done / max(1, n_batches), total_loss / seen, correct / seen)
    finally:
        if bar is not None:
            bar.close()
    if seen == 0:
        raise ValueError("no readable training image in this epoch")
    return EpochStats(total_loss / seen, correct / seen, seen)


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
    preset = EvalPreset(config.image_size, crop=config.crop, tta=tta)
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
                num_workers=config.workers if config.workers is not None else _default_workers(),
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
    probabilities = softmax_with_temperature(logits, temperature).double().numpy()
    return evaluation_report(labels.numpy(), probabilities)


# --- fit -------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What ``fit`` returns. ``checkpoint`` is calibrated and carries ``metrics``."""

    checkpoint: Checkpoint
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    val_samples: list[Sample] = field(default_factory=list)  # readable, in metric order
    val_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    val_probabilities: np.ndarray = field(default_factory=lambda: np.zeros((0, len(CODES))))
    unreadable: dict[str, str] = field(default_factory=dict)


def _save_state(state: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_state(path: str | Path) -> dict[str, Any]:
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path}: not a training state file ({STATE_FORMAT})")
    return state


def _sample_keys(samples: Sequence[Sample]) -> list[str]:
    return [f"{s.code}:{s.path}" for s in samples]


class _Run:
    """One call of ``fit``: the stages share the model, history and progress reporting."""

    def __init__(
        self,
        train: Sequence[Sample],
        val: Sequence[Sample],
        config: TrainConfig,
        init_checkpoint: Checkpoint | None,
        progress: ProgressFn | None,
        state_path: Path | None,
        resume_state: dict[str, Any] | None,
        progress_bar: bool,
        source_of: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.source_of = source_of
        self.progress = progress
        self.state_path = state_path
        self.progress_bar = progress_bar
        self.train_list = list(train)
        self.val_list = list(val)
        self.history: list[dict[str, Any]] = []
        self.unreadable: dict[str, str] = {}
        self.bad_train: set[int] = set()
        self.runtime = choose_runtime(config.device, config.precision)
        self.eval_runtime = choose_runtime(config.device, "auto")  # what scoring will use
        self.model, self.origin = initial_model(config, init_checkpoint)
        self.model = self.runtime.prepare_model(self.model)  # type: ignore[assignment]
        self.weak: dict[str, Any] = {}
        self.pre_weak_state: dict[str, torch.Tensor] | None = None
        self.average: WeightAverage | None = None  # the current stage's, with --ema-decay
        self.ema_choice: dict[str, Any] = {}  # per stage: averaged or last weights kept
        self.resume = resume_state
        self.last_report = 0.0
        self.last_loss = 0.0
        self.where: tuple[str, int, int] = ("head", 0, 0)  # (stage, epoch, epochs) for heartbeats
        self.last_accuracy = 0.0
        weak_epochs = config.epochs_weak
        self.planned = {
            "head": config.epochs_head,
            "finetune": config.epochs_finetune,
            "weak": weak_epochs,
            "calibrate": 1,
        }
        self.total_units = max(1, sum(self.planned.values()))
        self.units_done = 0.0

    # -- reporting

    def _percent(self) -> float:
        return round(min(100.0, 100.0 * self.units_done / self.total_units), 2)

    def report(
        self, stage: str, epoch: int, epochs: int, loss: float, accuracy: float, log: str
    ) -> None:
        self.last_report = time.monotonic()
        # JSON has no NaN: a report without a new figure repeats the last one
        if math.isfinite(loss):
            self.last_loss = float(loss)
        if math.isfinite(accuracy):
            self.last_accuracy = float(accuracy)
        loss, accuracy = self.last_loss, self.last_accuracy
        if self.progress is None:
            if log:
                logger.info(log)
            return
        self.progress(
            {
                "stage": stage,
                "epoch": epoch,
                "epochs": epochs,
                "percent": self._percent(),
                "loss": float(loss),
                "accuracy": float(accuracy),
                "log": log,
            }
        )

    def heartbeat(
        self, stage: str, epoch: int, epochs: int
    ) -> Callable[[float, float, float], None]:
        def beat(fraction: float, loss: float, accuracy: float) -> None:
            if time.monotonic() - self.last_report < self.config.progress_every_s:
                return
            base = self.units_done
            self.units_done = base + fraction
            try:
                self.report(stage, epoch, epochs, loss, accuracy, "")
            finally:
                self.units_done = base

        return beat

    # -- data

    def prepare(self) -> None:
        first = next((s for s in STAGES if self.planned[s]), "calibrate")

        def beat() -> None:
            if time.monotonic() - self.last_report >= self.config.progress_every_s:
                self.report(first, 0, self.planned[first], math.nan, math.nan, "")

        if self.progress is not None:
            self.report(
                first,
                0,
                self.planned[first],
                math.nan,
                math.nan,
                f"preparing {len(self.train_list)} training and {len(self.val_list)} "
                f"validation images at {self.config.image_size} px; {self.origin}",
            )
        self.train_data = prepare_images(self.train_list, self.config, heartbeat=beat)
        self.val_data = prepare_images(self.val_list, self.config, heartbeat=beat)
        self.unreadable.update(self.train_data.unreadable)
        self.unreadable.update(self.val_data.unreadable)
        if len(self.train_data.labels) == 0:
            raise ValueError("no readable training image")
        if len(self.val_data.labels) == 0:
            raise ValueError("no readable validation image")
        counts = class_counts(self.train_data.samples)
        logger.info(
            "training images per class: %s", ", ".join(f"{c} {n}" for c, n in counts.items())
        )

    def predict(self, runtime: Runtime, tta: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
        stage, epoch, epochs = self.where

        def beat() -> None:  # validation of a large set can outlast the job watchdog
            if time.monotonic() - self.last_report >= self.config.progress_every_s:
                self.report(stage, epoch, epochs, math.nan, math.nan, "")

        logits, labels, unreadable = predict_logits(
            self.model, self.val_data, self.config, runtime, heartbeat=beat, tta=tta
        )
        for path, error in unreadable.items():
            if path not in self.unreadable:
                self.unreadable[path] = error
                logger.warning("unreadable image left out: %s (%s)", path, error)
        return logits, labels

    def _on_train_errors(self, errors: dict[int, str]) -> None:
        for index, error in errors.items():
            if index in self.bad_train:
                continue
            self.bad_train.add(index)
            path = str(self.train_data.samples[index].path)
            self.unreadable[path] = error
            logger.warning("unreadable image left out: %s (%s)", path, error)

    # -- stages

    def _criterion(self) -> nn.Module:
        weight = None
        if self.config.balance == "loss":
            weight = _class_weights(self.train_data.labels, self.config.balance_power)
            weight = weight.to(self.runtime.device)
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=self.config.label_smoothing)

    def _order(self, generator: torch.Generator, boost: Sequence[str] = ()) -> torch.Tensor:
        labels = self.train_data.labels
        n = len(labels)
        if self.config.balance != "sampler" and not boost:
            return torch.randperm(n, generator=generator)
        if self.config.balance == "sampler":
            sources = None
            if self.config.balance_sources and self.source_of is not None:
                sources = [self.source_of.get(str(s.path), "?") for s in self.train_data.samples]
            weights = sample_weights(labels, self.config.balance_power, sources)
        else:
            weights = torch.ones(n, dtype=torch.float64)
        boost_factor = torch.ones(len(CODES), dtype=torch.float64)
        for code in boost:
            boost_factor[taxonomy.index_of(code)] = self.config.weak_oversample
        weights = weights * boost_factor[labels]
        return torch.multinomial(weights, n, replacement=True, generator=generator)

    def run_stage(self, stage: str, scope: str, base_lr: float, boost: Sequence[str] = ()) -> None:
        epochs = self.planned[stage]
        config = self.config
        params = set_scope(self.model, scope)
        optimizer = _optimizer(params, config, base_lr)
        start = 0
        resumed_average: dict[str, Any] = {}
        if self.resume is not None and self.resume["stage"] == stage:
            start = int(self.resume["epoch"])
            if start:
                optimizer.load_state_dict(self.resume["optimizer"])
                resumed_average = self.resume["ema"]
            self.resume = None
        self.average = None
        if config.ema_decay > 0 and epochs > 0:
            self.average = WeightAverage(self.model, config.ema_decay)
            if start and resumed_average:
                self.average.load_state_dict(resumed_average)
        self.units_done += start
        criterion = self._criterion()
        for epoch in range(start, epochs):
            started = time.monotonic()
            self.where = (stage, epoch + 1, epochs)
            lr = lr_at(config, base_lr, epoch, epochs)
            for group in optimizer.param_groups:
                group["lr"] = lr
            seed = _epoch_seed(config.seed, stage, epoch)
            torch.manual_seed(seed)
            generator = torch.Generator().manual_seed(seed)
            order = self._order(generator, boost)
            n_batches = math.ceil(len(order) / config.batch_size)
            low_res = stage == "finetune" and epoch < config.low_res_epochs
            train_size = config.low_res_size if low_res else None
            stats = train_one_epoch(
                self.model,
                _batches_for_training(self.train_data, order, config, generator, self.bad_train),
                n_batches,
                optimizer,
                criterion,
                self.runtime,
                scope,
                on_errors=self._on_train_errors,
                heartbeat=self.heartbeat(stage, epoch + 1, epochs),
                bar_desc=f"{stage} {epoch + 1}/{epochs}" if self.progress_bar else None,
                average=self.average,
                train_size=train_size,
            )
            self.units_done += 1
            # a stage's last epoch is always validated: the weight average and the weak
            # pass compare against it. Low-res epochs are not: their BatchNorm statistics
            # belong to the other scale, so the figure would say nothing (10-24 %).
            last = epoch + 1 == epochs
            validate = last or (not low_res and (epoch + 1) % config.val_every == 0)
            val: dict[str, float | None] = dict.fromkeys(
                ("val_loss", "val_accuracy", "val_balanced_accuracy")
            )
            summary = "not validated (" + ("low-res epoch" if low_res else "--val-every") + ")"
            if validate:
                logits, labels = self.predict(self.runtime)
                report = report_for(logits, labels)
                val = {
                    "val_loss": float(F.cross_entropy(logits, labels)),
                    "val_accuracy": report["accuracy"],
                    "val_balanced_accuracy": report["balanced_accuracy"],
                }
                summary = (
                    f"val loss {val['val_loss']:.3f} acc {val['val_accuracy']:.3f} "
                    f"bal {val['val_balanced_accuracy']:.3f}"
                )
            record = {
                "stage": stage,
                "epoch": epoch + 1,
                "epochs": epochs,
                "scope": scope,
                "lr": lr,
                "train_size": train_size or config.image_size,
                "train_loss": stats.loss,
                "train_accuracy": stats.accuracy,
                **val,
                "seconds": round(time.monotonic() - started, 2),
            }
            self.history.append(record)
            self.save_state(stage, epoch + 1, optimizer)
            self.report(
                stage,
                epoch + 1,
                epochs,
                stats.loss,
                stats.accuracy,
                f"{stage} {epoch + 1}/{epochs} lr {lr:.2g}: train loss {stats.loss:.3f} "
                f"acc {stats.accuracy:.3f} | {summary} ({record['seconds']:.0f} s)",
            )
        if self.average is not None:
            self.choose_average(stage, self.average)
            self.average = None

    def choose_average(self, stage: str, average: WeightAverage) -> None:
        """Keep the weight average instead of the last weights when it is not worse.

        A short run's validation figure moves by several points from one epoch to the
        next; the average over about the last epoch's steps is steadier.
        """
        last = self.history[-1]
        assert last["stage"] == stage
        trained = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(average.state)
        logits, labels = self.predict(self.runtime)
        averaged = float(report_for(logits, labels)["balanced_accuracy"])
        kept = averaged >= last["val_balanced_accuracy"]
        if not kept:
            self.model.load_state_dict(trained)
        last["val_balanced_accuracy_ema"] = averaged
        self.ema_choice[stage] = {
            "decay": average.decay,
            "steps": average.updates,
            "balanced_accuracy_last": last["val_balanced_accuracy"],
            "balanced_accuracy_average": averaged,
            "kept": "average" if kept else "last",
        }
        self.report(
            stage,
            last["epoch"],
            last["epochs"],
            math.nan,
            math.nan,
            f"{stage}: weight average (decay {average.decay:g}, {average.updates} steps) "
            f"balanced accuracy {averaged:.3f} vs last weights "
            f"{last['val_balanced_accuracy']:.3f}: {'average' if kept else 'last'} kept",
        )

    def save_state(self, stage: str, epoch: int, optimizer: torch.optim.Optimizer | None) -> None:
        if self.state_path is None:
            return
        state = {
            "format": STATE_FORMAT,
            "config": self.config.as_dict(),
            "stage": stage,
            "epoch": epoch,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": optimizer.state_dict() if optimizer is not None else {},
            "ema": self.average.state_dict() if self.average is not None else {},
            "ema_choice": self.ema_choice,
            "history": self.history,
            "weak": self.weak,
            "pre_weak_model": self.pre_weak_state or {},
            "train": _sample_keys(self.train_list),
            "val": _sample_keys(self.val_list),
        }
        _save_state(state, self.state_path)

    def restore(self, state: dict[str, Any]) -> None:
        if state["train"] != _sample_keys(self.train_list) or state["val"] != _sample_keys(
            self.val_list
        ):
            raise ValueError(
                "the resume state was made with a different training/validation split; "
                "use the same --data, --seed, --class-cap and --val-fraction"
            )
        self.model.load_state_dict(state["model"])
        self.history = list(state["history"])
        self.weak = dict(state["weak"])
        self.ema_choice = dict(state.get("ema_choice", {}))
        self.pre_weak_state = dict(state["pre_weak_model"]) or None
        self.resume = {k: state[k] for k in ("stage", "epoch", "optimizer")}
        self.resume["ema"] = state.get("ema", {})
        done_stage = STAGES.index(state["stage"])
        self.units_done = float(sum(self.planned[s] for s in STAGES[:done_stage]))
        logger.info("resuming after %s epoch %d", state["stage"], state["epoch"])

    def done_before_resume(self, stage: str) -> bool:
        """True when the state being resumed is past ``stage`` already."""
        return self.resume is not None and STAGES.index(stage) < STAGES.index(self.resume["stage"])

    def weak_pass(self) -> None:
        config = self.config
        resuming = self.resume is not None and self.resume["stage"] == "weak"
        if resuming and self.weak.get("done"):
            self.units_done += self.planned["weak"]
            self.resume = None
            return
        self.where = ("weak", 0, self.planned["weak"])
        if not resuming:
            logits, labels = self.predict(self.runtime)
            before = report_for(logits, labels)
            weak_before = weak_classes(before, config.weak_threshold)
            self.weak = {
                "threshold": config.weak_threshold,
                "before": weak_before,
                "after": weak_before,
                "ran": False,
                "kept": False,
                "balanced_accuracy_before": before["balanced_accuracy"],
                "balanced_accuracy_after": None,
            }
            if not weak_before or self.planned["weak"] == 0:
                self.units_done += self.planned["weak"]
                reason = "no weak class" if not weak_before else "--epochs-weak 0"
                self.weak["done"] = True
                self.report(
                    "weak",
                    0,
                    self.planned["weak"],
                    math.nan,
                    math.nan,
                    f"weak-class pass skipped ({reason})",
                )
                self.save_state("weak", self.planned["weak"], None)
                return
            self.pre_weak_state = {
                k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()
            }
            torch.manual_seed(_epoch_seed(config.seed, "weak", 0) + 1)
            self.model.fc.reset_parameters()  # a fresh head, as in the paper
            self.report(
                "weak",
                0,
                self.planned["weak"],
                math.nan,
                math.nan,
                f"weak classes (TPR < {config.weak_threshold:g}): "
                f"{', '.join(weak_before)}; retraining {config.weak_scope} and a new "
                "head with them oversampled",
            )
        self.run_stage("weak", config.weak_scope, config.lr_weak, boost=self.weak["before"])
        self.where = ("weak", self.planned["weak"], self.planned["weak"])
        logits, labels = self.predict(self.runtime)
        after = report_for(logits, labels)
        kept = after["balanced_accuracy"] >= self.weak["balanced_accuracy_before"]
        self.weak.update(
            ran=True,
            kept=kept,
            balanced_accuracy_after=after["balanced_accuracy"],
            after=weak_classes(after, config.weak_threshold) if kept else self.weak["before"],
            candidate_weak_after=weak_classes(after, config.weak_threshold),
        )
        if not kept:
            assert self.pre_weak_state is not None
            self.model.load_state_dict(self.pre_weak_state)
        self.pre_weak_state = None
        self.weak["done"] = True
        self.report(
            "weak",
            self.planned["weak"],
            self.planned["weak"],
            math.nan,
            math.nan,
            f"weak-class pass {'kept' if kept else 'discarded'}: balanced accuracy "
            f"{self.weak['balanced_accuracy_before']:.3f} -> {after['balanced_accuracy']:.3f}; "
            f"weak after: {', '.join(self.weak['after']) or 'none'}",
        )
        self.save_state("weak", self.planned["weak"], None)

    def finish(self) -> TrainResult:
        config = self.config
        self.where = ("calibrate", 0, 1)
        # calibrated and evaluated exactly as Scorer will run this checkpoint (its --tta)
        logits, labels = self.predict(self.eval_runtime, config.tta)
        calibration: dict[str, Any] = {}
        temperature = 1.0
        if config.calibrate:
            cal = calibrate(logits, labels)
            temperature = cal.temperature
            calibration = cal.as_dict()
        self.units_done = self.total_units
        metrics = report_for(logits, labels, temperature)
        probabilities = softmax_with_temperature(logits, temperature).double().numpy()
        metrics["n_unreadable"] = len(self.unreadable)
        metrics["temperature"] = temperature
        metrics["calibration"] = calibration
        metrics["weak_classes"] = self.weak or {"before": [], "after": [], "ran": False}
        metrics["history"] = self.history
        metrics["ema"] = self.ema_choice
        metrics["train_counts"] = class_counts(self.train_data.samples)
        metrics["val_counts"] = class_counts(self.val_data.samples)
        metrics["unreadable"] = dict(sorted(self.unreadable.items()))
        metrics["init"] = self.origin
        self.report(
            "calibrate",
            1,
            1,
            float(F.cross_entropy(logits / temperature, labels)),
            float(metrics["accuracy"]),
            f"calibrated: T = {temperature:.3f}, ECE {calibration.get('ece_before', math.nan):.3f}"
            f" -> {calibration.get('ece_after', math.nan):.3f}; validation balanced "
            f"accuracy {metrics['balanced_accuracy']:.3f}",
        )
        checkpoint = make_checkpoint(
            self.model,
            arch=config.arch,
            input_size=config.image_size,
            temperature=temperature,
            args=config.as_dict(),
            metrics=metrics,
        )
        return TrainResult(
            checkpoint=checkpoint,
            metrics=metrics,
            history=self.history,
            val_samples=list(self.val_data.samples),
            val_labels=labels.numpy(),
            val_probabilities=probabilities,
            unreadable=dict(self.unreadable),
        )


def fit(
    train: Sequence[Sample],
    val: Sequence[Sample],
    config: TrainConfig,
    *,
    init_checkpoint: Checkpoint | None = None,
    progress: ProgressFn | None = None,
    state_path: str | Path | None = None,
    resume_state: dict[str, Any] | None = None,
    progress_bar: bool = False,
    source_of: Mapping[str, str] | None = None,
) -> TrainResult:
    """Train on ``train``, evaluate and calibrate on ``val`` (already split by the caller).

    ``progress`` gets ``{stage, epoch, epochs, percent, loss, accuracy, log}`` at least
    once per epoch (and every ``config.progress_every_s`` within one); if it raises, the
    exception propagates and nothing is written. ``state_path``: write a resumable state
    there after every epoch (atomically); ``resume_state``: continue from one.
    ``source_of`` (image path -> source name, e.g. the hospital) lets
    ``config.balance_sources`` weigh every source equally within each class.
    """
    if not train or not val:
        raise ValueError(f"fit needs training ({len(train)}) and validation ({len(val)}) images")
    unlabelled = [s for s in [*train, *val] if s.code is None]
    if unlabelled:
        raise ValueError(f"{len(unlabelled)} samples without a class, e.g. {unlabelled[0].path}")
    previous_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        train = _cap_train(train, config)
        torch.manual_seed(config.seed)  # the random initialisation of head and backbone
        run = _Run(
            train,
            val,
            config,
            init_checkpoint,
            progress,
            Path(state_path) if state_path else None,
            resume_state,
            progress_bar,
            source_of,
        )
        run.prepare()
        if resume_state is not None:
            run.restore(resume_state)
        if config.epochs_head and not run.done_before_resume("head"):
            run.run_stage("head", "head", config.lr)
        if config.epochs_finetune and not run.done_before_resume("finetune"):
            run.run_stage("finetune", config.finetune_scope, config.lr)
        run.weak_pass()
        return run.finish()
    finally:
        torch.set_num_threads(previous_threads)


def _cap_train(train: Sequence[Sample], config: TrainConfig) -> list[Sample]:
    from mlworker.train.splits import cap_per_class

    return cap_per_class(train, config.class_cap, config.seed)


def evaluate_samples(
    checkpoint: Checkpoint,
    samples: Sequence[Sample],
    *,
    batch_size: int = 64,
    runtime: Runtime | None = None,
) -> dict[str, Any]:
    """The evaluation JSON of ``checkpoint`` (its own temperature) on labelled ``samples``."""
    from mlworker.score import Scorer

    scorer = Scorer(checkpoint, runtime=runtime)
    scores = scorer.score(list(samples), batch_size=batch_size, num_workers=0)
    readable = [(s, m) for s, m in zip(scores, samples, strict=True) if s.error is None]
    labels = np.array([m.label for _, m in readable], dtype=np.int64)
    probabilities = np.zeros((len(readable), len(scorer.codes)), dtype=np.float64)
    for row, (score, _) in enumerate(readable):
        probabilities[row] = score.probabilities
    report = evaluation_report(labels, probabilities, scorer.codes)
    report["n_unreadable"] = len(scores) - len(readable)
    report["temperature"] = scorer.temperature
    return report
