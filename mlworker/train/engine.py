"""The training stages: head, fine-tune, weak-class pass, temperature scaling.

``fit(train, val, config)`` runs on lists the caller has already split; it never re-splits.
It writes nothing unless given ``state_path`` (the CLI's ``--resume`` file, written
atomically after every epoch). A ``progress`` callback that raises stops it at once.

Stages (see mlworker/training.md), each a function over one ``TrainState``:
1. ``head``: only ``model.fc`` trains; the backbone is frozen and kept in eval mode, so
   neither its weights nor its BatchNorm statistics change.
2. ``finetune``: the backbone's last stage + head (scope ``layer4``, the default: ResNet's
   ``layer4``; an EfficientNet-Lite's stride-32 blocks and head convolution), or the whole
   network (``all``).
3. ``weak``: classes with validation TPR below the threshold get a targeted pass: a freshly
   initialised head and the ``--weak-scope`` retrain with those classes oversampled; the
   result is kept only if validation balanced accuracy does not fall.
4. ``calibrate``: temperature scaling on the validation logits.

Every family trains through the same code: the model names its parts
(``head_parameters``, ``last_stage_modules``) and ``batches.input_normalization`` gives
the input scaling of the arch's pretraining, used for training, validation and the
checkpoint alike.

The pieces: ``batches`` (images, sampling order), ``optim`` (scope, optimizer, schedule),
``averaging`` (``--ema-decay``), ``loop`` (``train_one_epoch``, ``predict_logits``),
``progress`` (reports, heartbeats) and ``state`` (shared state, the resume file).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from torch.optim.swa_utils import AveragedModel

from mlworker.calibration import calibrate, softmax_with_temperature
from mlworker.data import Sample
from mlworker.device import Runtime
from mlworker.metrics import weak_classes
from mlworker.model import Checkpoint, make_checkpoint
from mlworker.train.averaging import average_steps, averaged_state, weight_average
from mlworker.train.batches import (
    PreparedImages,
    batches_for_training,
    class_weights,
    input_normalization,
    prepare_images,
    sample_weights,
    training_order,
)
from mlworker.train.config import TrainConfig
from mlworker.train.loop import evaluate_samples, predict_logits, report_for, train_one_epoch
from mlworker.train.optim import current_lr, lr_scheduler, make_optimizer, set_scope
from mlworker.train.progress import EpochMeter, ProgressFn
from mlworker.train.splits import class_counts
from mlworker.train.state import (
    ResumePoint,
    TrainResult,
    TrainState,
    epoch_seed,
    load_state,
    prepare_state,
    restore,
    save_state,
)

__all__ = [  # what the CLI, the benchmarks and the tests import from here
    "PreparedImages",
    "TrainResult",
    "batches_for_training",
    "evaluate_samples",
    "fit",
    "load_state",
    "prepare_images",
    "sample_weights",
    "train_one_epoch",
]

logger = logging.getLogger(__name__)


# --- what every stage uses --------------------------------------------------------------


def validate(
    state: TrainState, runtime: Runtime | None = None, tta: str = "none"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validation logits and labels of the current model; new unreadable images noted."""
    logits, labels, unreadable = predict_logits(
        state.model,
        state.val_data,
        state.config,
        runtime or state.runtime,
        heartbeat=state.progress.beat,  # a large validation set can outlast the watchdog
        tta=tta,
    )
    for path, error in unreadable.items():
        if path not in state.unreadable:
            state.unreadable[path] = error
            logger.warning("unreadable image left out: %s (%s)", path, error)
    return logits, labels


def _note_unreadable_training_images(state: TrainState, errors: dict[int, str]) -> None:
    for index, error in errors.items():
        if index in state.bad_train:
            continue
        state.bad_train.add(index)
        path = str(state.train_data.samples[index].path)
        state.unreadable[path] = error
        logger.warning("unreadable image left out: %s (%s)", path, error)


def _criterion(state: TrainState) -> nn.Module:
    config = state.config
    weight = None
    if config.balance == "loss":
        weight = class_weights(state.train_data.labels, config.balance_power)
        weight = weight.to(state.runtime.device)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)


# --- stages 1-3: training ---------------------------------------------------------------


def train_stage(
    state: TrainState,
    stage: str,
    scope: str,
    base_lr: float,
    *,
    resume: ResumePoint | None = None,
    boost: Sequence[str] = (),
) -> None:
    """Train ``scope`` for the stage's epochs (from ``resume``'s, when it lies in this stage).

    ``boost``: classes whose sampling weight is multiplied by ``--weak-oversample``.
    """
    config = state.config
    epochs = state.progress.planned[stage]
    optimizer = make_optimizer(set_scope(state.model, scope), config, base_lr)
    scheduler = lr_scheduler(optimizer, config, epochs)
    average = None
    if config.ema_decay > 0 and epochs > 0:
        average = weight_average(state.model, config.ema_decay)
    start = resume.epoch if resume is not None else 0
    if resume is not None and start:
        optimizer.load_state_dict(resume.optimizer)
        scheduler.load_state_dict(resume.scheduler)
        if average is not None and resume.average:
            average.load_state_dict(resume.average)
    state.progress.units_done += start
    criterion = _criterion(state)
    for epoch in range(start, epochs):
        _train_epoch(state, stage, scope, epoch, optimizer, scheduler, criterion, average, boost)
    if average is not None:
        choose_average(state, stage, average)


def _train_epoch(
    state: TrainState,
    stage: str,
    scope: str,
    epoch: int,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler,
    criterion: nn.Module,
    average: AveragedModel | None,
    boost: Sequence[str],
) -> None:
    """Epoch ``epoch`` (0-based) of ``stage``: train, validate, record, save, report."""
    config, progress = state.config, state.progress
    epochs = progress.planned[stage]
    started = time.monotonic()
    progress.where = (stage, epoch + 1, epochs)
    lr = current_lr(optimizer)
    seed = epoch_seed(config.seed, stage, epoch)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    order = training_order(
        state.train_data, config, generator, boost=boost, source_of=state.source_of
    )
    low_res = stage == "finetune" and epoch < config.low_res_epochs
    train_size = config.low_res_size if low_res else None
    meter = EpochMeter(
        math.ceil(len(order) / config.batch_size),
        heartbeat=progress.heartbeat(stage, epoch + 1, epochs),
        bar_desc=f"{stage} {epoch + 1}/{epochs}" if state.progress_bar else None,
    )
    stats = train_one_epoch(
        state.model,
        criterion,
        optimizer,
        batches_for_training(state.train_data, order, config, generator, state.bad_train),
        state.runtime,
        meter,
        scope=scope,
        average=average,
        train_size=train_size,
        on_errors=lambda errors: _note_unreadable_training_images(state, errors),
    )
    scheduler.step()
    progress.units_done += 1
    # a stage's last epoch is always validated: the weight average and the weak pass
    # compare against it. Low-res epochs are not: their BatchNorm statistics belong to
    # the other scale, so the figure would say nothing (10-24 %).
    last = epoch + 1 == epochs
    val: dict[str, float | None] = dict.fromkeys(
        ("val_loss", "val_accuracy", "val_balanced_accuracy")
    )
    summary = "not validated (" + ("low-res epoch" if low_res else "--val-every") + ")"
    if last or (not low_res and (epoch + 1) % config.val_every == 0):
        logits, labels = validate(state)
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
    state.history.append(record)
    save_state(state, stage, epoch + 1, optimizer=optimizer, scheduler=scheduler, average=average)
    progress.report(
        stage,
        epoch + 1,
        epochs,
        f"{stage} {epoch + 1}/{epochs} lr {lr:.2g}: train loss {stats.loss:.3f} "
        f"acc {stats.accuracy:.3f} | {summary} ({record['seconds']:.0f} s)",
        loss=stats.loss,
        accuracy=stats.accuracy,
    )


def choose_average(state: TrainState, stage: str, average: AveragedModel) -> None:
    """Keep the weight average instead of the last weights when it is not worse.

    A short run's validation figure moves by several points from one epoch to the
    next; the average over about the last epoch's steps is steadier.
    """
    last = state.history[-1]
    assert last["stage"] == stage
    trained = {k: v.detach().clone() for k, v in state.model.state_dict().items()}
    state.model.load_state_dict(averaged_state(average))
    logits, labels = validate(state)
    averaged = float(report_for(logits, labels)["balanced_accuracy"])
    kept = averaged >= last["val_balanced_accuracy"]
    if not kept:
        state.model.load_state_dict(trained)
    decay, steps = state.config.ema_decay, average_steps(average)
    last["val_balanced_accuracy_ema"] = averaged
    state.ema_choice[stage] = {
        "decay": decay,
        "steps": steps,
        "balanced_accuracy_last": last["val_balanced_accuracy"],
        "balanced_accuracy_average": averaged,
        "kept": "average" if kept else "last",
    }
    state.progress.report(
        stage,
        last["epoch"],
        last["epochs"],
        f"{stage}: weight average (decay {decay:g}, {steps} steps) "
        f"balanced accuracy {averaged:.3f} vs last weights "
        f"{last['val_balanced_accuracy']:.3f}: {'average' if kept else 'last'} kept",
    )


def weak_pass(state: TrainState, *, resume: ResumePoint | None = None) -> None:
    """Stage 3: retrain with the weak classes oversampled; keep it only if not worse."""
    config, progress = state.config, state.progress
    epochs = progress.planned["weak"]
    if resume is not None and state.weak.get("done"):
        progress.units_done += epochs
        return
    progress.where = ("weak", 0, epochs)
    if resume is None and not _start_weak_pass(state):
        return
    train_stage(
        state, "weak", config.weak_scope, config.lr_weak, resume=resume, boost=state.weak["before"]
    )
    progress.where = ("weak", epochs, epochs)
    logits, labels = validate(state)
    after = report_for(logits, labels)
    kept = after["balanced_accuracy"] >= state.weak["balanced_accuracy_before"]
    state.weak.update(
        ran=True,
        kept=kept,
        balanced_accuracy_after=after["balanced_accuracy"],
        after=weak_classes(after, config.weak_threshold) if kept else state.weak["before"],
        candidate_weak_after=weak_classes(after, config.weak_threshold),
    )
    if not kept:
        assert state.pre_weak_model is not None
        state.model.load_state_dict(state.pre_weak_model)
    state.pre_weak_model = None
    state.weak["done"] = True
    progress.report(
        "weak",
        epochs,
        epochs,
        f"weak-class pass {'kept' if kept else 'discarded'}: balanced accuracy "
        f"{state.weak['balanced_accuracy_before']:.3f} -> {after['balanced_accuracy']:.3f}; "
        f"weak after: {', '.join(state.weak['after']) or 'none'}",
    )
    save_state(state, "weak", epochs)


def _start_weak_pass(state: TrainState) -> bool:
    """Find the weak classes and give the model a fresh head; False: nothing to retrain."""
    config, progress = state.config, state.progress
    epochs = progress.planned["weak"]
    logits, labels = validate(state)
    before = report_for(logits, labels)
    weak_before = weak_classes(before, config.weak_threshold)
    state.weak = {
        "threshold": config.weak_threshold,
        "before": weak_before,
        "after": weak_before,
        "ran": False,
        "kept": False,
        "balanced_accuracy_before": before["balanced_accuracy"],
        "balanced_accuracy_after": None,
    }
    if not weak_before or epochs == 0:
        progress.units_done += epochs
        reason = "no weak class" if not weak_before else "--epochs-weak 0"
        state.weak["done"] = True
        progress.report("weak", 0, epochs, f"weak-class pass skipped ({reason})")
        save_state(state, "weak", epochs)
        return False
    state.pre_weak_model = {
        k: v.detach().cpu().clone() for k, v in state.model.state_dict().items()
    }
    torch.manual_seed(epoch_seed(config.seed, "weak", 0) + 1)
    state.model.fc.reset_parameters()  # a fresh head, as in the paper
    progress.report(
        "weak",
        0,
        epochs,
        f"weak classes (TPR < {config.weak_threshold:g}): {', '.join(weak_before)}; "
        f"retraining {config.weak_scope} and a new head with them oversampled",
    )
    return True


# --- stage 4: calibration ---------------------------------------------------------------


def calibrate_and_package(state: TrainState) -> TrainResult:
    """Temperature-scale on the validation logits and build the checkpoint and metrics."""
    config, progress = state.config, state.progress
    progress.where = ("calibrate", 0, 1)
    # calibrated and evaluated exactly as Scorer will run this checkpoint (its --tta)
    logits, labels = validate(state, state.eval_runtime, config.tta)
    calibration: dict[str, Any] = {}
    temperature = 1.0
    if config.calibrate:
        cal = calibrate(logits, labels)
        temperature = cal.temperature
        calibration = cal.as_dict()
    progress.units_done = progress.total_units
    metrics = report_for(logits, labels, temperature)
    probabilities = softmax_with_temperature(logits, temperature).double().numpy()
    metrics["n_unreadable"] = len(state.unreadable)
    metrics["temperature"] = temperature
    metrics["calibration"] = calibration
    metrics["weak_classes"] = state.weak or {"before": [], "after": [], "ran": False}
    metrics["history"] = state.history
    metrics["ema"] = state.ema_choice
    metrics["train_counts"] = class_counts(state.train_data.samples)
    metrics["val_counts"] = class_counts(state.val_data.samples)
    metrics["unreadable"] = dict(sorted(state.unreadable.items()))
    metrics["init"] = state.origin
    progress.report(
        "calibrate",
        1,
        1,
        f"calibrated: T = {temperature:.3f}, ECE {calibration.get('ece_before', math.nan):.3f}"
        f" -> {calibration.get('ece_after', math.nan):.3f}; validation balanced "
        f"accuracy {metrics['balanced_accuracy']:.3f}",
        loss=float(F.cross_entropy(logits / temperature, labels)),
        accuracy=float(metrics["accuracy"]),
    )
    mean, std = input_normalization(config)  # what training and calibration normalised with
    checkpoint = make_checkpoint(
        state.model,
        arch=config.arch,
        input_size=config.image_size,
        mean=mean,
        std=std,
        temperature=temperature,
        args=config.as_dict(),
        metrics=metrics,
    )
    return TrainResult(
        checkpoint=checkpoint,
        metrics=metrics,
        history=state.history,
        val_samples=list(state.val_data.samples),
        val_labels=labels.numpy(),
        val_probabilities=probabilities,
        unreadable=dict(state.unreadable),
    )


# --- fit --------------------------------------------------------------------------------


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
        state = prepare_state(
            train,
            val,
            config,
            init_checkpoint=init_checkpoint,
            progress=progress,
            state_path=Path(state_path) if state_path else None,
            progress_bar=progress_bar,
            source_of=source_of,
        )
        resume = restore(state, resume_state) if resume_state is not None else None
        for stage, scope, epochs in (
            ("head", "head", config.epochs_head),
            ("finetune", config.finetune_scope, config.epochs_finetune),
        ):
            if epochs and not (resume is not None and resume.is_past(stage)):
                at = resume.within(stage) if resume is not None else None
                train_stage(state, stage, scope, config.lr, resume=at)
        weak_pass(state, resume=resume.within("weak") if resume is not None else None)
        return calibrate_and_package(state)
    finally:
        torch.set_num_threads(previous_threads)


def _cap_train(train: Sequence[Sample], config: TrainConfig) -> list[Sample]:
    from mlworker.train.splits import cap_per_class

    return cap_per_class(train, config.class_cap, config.seed)
