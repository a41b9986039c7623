"""What the stages of one ``fit`` share (built by ``prepare_state``), what it returns,
and the resume file.

The resume file (``--resume``; ``fit(state_path=...)``) is a plain dict written atomically
after every epoch: the model, the current stage's optimizer, learning-rate scheduler and
weight average, the history and the split it was made with. ``ResumePoint`` is the part a
stage reads back; it is never modified, so each stage decides from it alone whether it
is done, continues, or starts afresh.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.lr_scheduler import LRScheduler
from torch.optim.swa_utils import AveragedModel

from mlworker import taxonomy
from mlworker.data import Sample
from mlworker.device import Runtime, choose_runtime
from mlworker.model import Checkpoint, WBCClassifier, build_classifier, new_classifier
from mlworker.train.batches import PreparedImages, prepare_images
from mlworker.train.config import TrainConfig
from mlworker.train.progress import Progress, ProgressFn
from mlworker.train.splits import class_counts

logger = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("head", "finetune", "weak", "calibrate")
STATE_FORMAT = "wbc-train-state/2"  # /2: scheduler state, the average as AveragedModel's


def epoch_seed(seed: int, stage: str, epoch: int) -> int:
    """Each epoch's randomness depends only on (seed, stage, epoch): resumable exactly."""
    return (seed * 1_000_003 + STAGES.index(stage) * 10_007 + epoch) % (2**63)


@dataclass
class TrainState:
    """One call of ``fit``: the model and data every stage works on and what it recorded."""

    config: TrainConfig
    model: WBCClassifier
    origin: str  # where the starting weights came from, for the log and metrics
    runtime: Runtime  # training (and the per-epoch validation)
    eval_runtime: Runtime  # the final calibration, as scoring will run the checkpoint
    train_data: PreparedImages
    val_data: PreparedImages
    progress: Progress
    split_keys: dict[str, list[str]]  # "train"/"val": the split as given, for resuming
    source_of: Mapping[str, str] | None = None
    state_path: Path | None = None
    progress_bar: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    weak: dict[str, Any] = field(default_factory=dict)
    ema_choice: dict[str, Any] = field(default_factory=dict)  # per stage: average or last
    pre_weak_model: dict[str, torch.Tensor] | None = None  # restored if the pass is worse
    unreadable: dict[str, str] = field(default_factory=dict)
    bad_train: set[int] = field(default_factory=set)  # training indices found unreadable


@dataclass(frozen=True)
class ResumePoint:
    """Where a saved run stopped: after ``epoch`` epochs of ``stage``."""

    stage: str
    epoch: int
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    average: dict[str, Any]

    def is_past(self, stage: str) -> bool:
        return STAGES.index(stage) < STAGES.index(self.stage)

    def within(self, stage: str) -> ResumePoint | None:
        """This point if it lies within ``stage``, else None (the stage starts afresh)."""
        return self if self.stage == stage else None


@dataclass
class TrainResult:
    """What ``fit`` returns. ``checkpoint`` is calibrated and carries ``metrics``."""

    checkpoint: Checkpoint
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    val_samples: list[Sample] = field(default_factory=list)  # readable, in metric order
    val_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    val_probabilities: np.ndarray = field(
        default_factory=lambda: np.zeros((0, len(taxonomy.CODES)))
    )
    unreadable: dict[str, str] = field(default_factory=dict)


def sample_keys(samples: Sequence[Sample]) -> list[str]:
    return [f"{s.code}:{s.path}" for s in samples]


def _cpu(state: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def save_state(
    state: TrainState,
    stage: str,
    epoch: int,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: LRScheduler | None = None,
    average: AveragedModel | None = None,
) -> None:
    """Write the resume file (if ``fit`` was given one) after ``epoch`` epochs of ``stage``."""
    if state.state_path is None:
        return
    saved = {
        "format": STATE_FORMAT,
        "config": state.config.as_dict(),
        "stage": stage,
        "epoch": epoch,
        "model": _cpu(state.model.state_dict()),
        "optimizer": optimizer.state_dict() if optimizer is not None else {},
        "scheduler": scheduler.state_dict() if scheduler is not None else {},
        "ema": _cpu(average.state_dict()) if average is not None else {},
        "ema_choice": state.ema_choice,
        "history": state.history,
        "weak": state.weak,
        "pre_weak_model": state.pre_weak_model or {},
        "train": state.split_keys["train"],
        "val": state.split_keys["val"],
    }
    path = state.state_path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(saved, tmp)
    tmp.replace(path)


def load_state(path: str | Path) -> dict[str, Any]:
    saved = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or saved.get("format") != STATE_FORMAT:
        raise ValueError(f"{path}: not a training state file ({STATE_FORMAT})")
    return saved


def restore(state: TrainState, saved: dict[str, Any]) -> ResumePoint:
    """Load a resume file's model and records into ``state``; return where it stopped.

    The split is compared by image: the file must come from the same data and split.
    """
    if saved["train"] != state.split_keys["train"] or saved["val"] != state.split_keys["val"]:
        raise ValueError(
            "the resume state was made with a different training/validation split; "
            "use the same --data, --seed, --class-cap and --val-fraction"
        )
    state.model.load_state_dict(saved["model"])
    state.history = list(saved["history"])
    state.weak = dict(saved["weak"])
    state.ema_choice = dict(saved.get("ema_choice", {}))
    state.pre_weak_model = dict(saved["pre_weak_model"]) or None
    point = ResumePoint(
        stage=saved["stage"],
        epoch=int(saved["epoch"]),
        optimizer=saved["optimizer"],
        scheduler=saved.get("scheduler", {}),
        average=saved.get("ema", {}),
    )
    planned = state.progress.planned
    state.progress.units_done = float(sum(planned[s] for s in STAGES[: STAGES.index(point.stage)]))
    logger.info("resuming after %s epoch %d", point.stage, point.epoch)
    return point


# --- building the state ---------------------------------------------------------------


class WeightsUnavailable(RuntimeError):
    """``--weights imagenet`` asked for weights this machine does not have (a ResNet
    offline with an empty torchvision cache, or a missing weights package). The CLI
    prints it as a one-line error, not a traceback: the message says what to do."""


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
        model = new_classifier(config.arch, len(taxonomy.CODES))
        model.load_state_dict(init_checkpoint["model"])  # a copy: the caller's stays intact
        return model, f"{config.arch} from the given checkpoint (backbone and head)"
    weights = config.weights
    if weights.lower() == "none":
        return build_classifier(
            config.arch, len(taxonomy.CODES), None
        ), f"{config.arch} random init"
    if weights == "imagenet":
        try:
            model = build_classifier(config.arch, len(taxonomy.CODES), "imagenet")
        except RuntimeError as exc:
            raise WeightsUnavailable(f"{exc}, or --weights none for random initialisation") from exc
        return model, f"{config.arch} ImageNet weights"
    model = build_classifier(config.arch, len(taxonomy.CODES), weights)
    return model, f"{config.arch} weights {weights}"


def prepare_state(
    train: Sequence[Sample],
    val: Sequence[Sample],
    config: TrainConfig,
    *,
    init_checkpoint: Checkpoint | None,
    progress: ProgressFn | None,
    state_path: Path | None,
    progress_bar: bool,
    source_of: Mapping[str, str] | None,
) -> TrainState:
    """Build the starting model and decode the images of both splits once."""
    runtime = choose_runtime(config.device, config.precision)
    eval_runtime = choose_runtime(config.device, "auto")  # what scoring will use
    model, origin = initial_model(config, init_checkpoint)
    model = runtime.prepare_model(model)  # type: ignore[assignment]
    planned = {
        "head": config.epochs_head,
        "finetune": config.epochs_finetune,
        "weak": config.epochs_weak,
        "calibrate": 1,
    }
    reporter = Progress(progress, planned=planned, every_s=config.progress_every_s)
    first = next((s for s in STAGES if planned[s]), "calibrate")
    reporter.where = (first, 0, planned[first])
    if progress is not None:
        reporter.report(
            *reporter.where,
            f"preparing {len(train)} training and {len(val)} validation images at "
            f"{config.image_size} px; {origin}",
        )
    train_data = prepare_images(train, config, heartbeat=reporter.beat)
    val_data = prepare_images(val, config, heartbeat=reporter.beat)
    if len(train_data.labels) == 0:
        raise ValueError("no readable training image")
    if len(val_data.labels) == 0:
        raise ValueError("no readable validation image")
    counts = class_counts(train_data.samples)
    logger.info("training images per class: %s", ", ".join(f"{c} {n}" for c, n in counts.items()))
    return TrainState(
        config=config,
        model=model,
        origin=origin,
        runtime=runtime,
        eval_runtime=eval_runtime,
        train_data=train_data,
        val_data=val_data,
        progress=reporter,
        split_keys={"train": sample_keys(train), "val": sample_keys(val)},
        source_of=source_of,
        state_path=state_path,
        progress_bar=progress_bar,
        unreadable={**train_data.unreadable, **val_data.unreadable},
    )
