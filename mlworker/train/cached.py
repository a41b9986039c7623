"""Retraining the final layers on cached trunk activations: fast enough to run after every
round of labels.

A retrain that only changes the last stage and the head (``last_stage_modules``) runs the
frozen part of the network, the trunk (``trunk_modules``), on the same inputs every epoch
and every round. Here the trunk runs once per cell and per fixed view (the checkpoint's
test-time views: the four flips for ``--tta flips``) and its activations, the tensors
*entering* the last stage (7x7 at 112 px), are kept in memory and, with ``--trunk-cache``,
on disk under a fingerprint of the trunk's weights and statistics, the input size, crop and
views: a later retrain from a version with the same trunk (every version this mode makes
keeps its parent's trunk) reads them back instead of decoding and recomputing. Each
training step takes one of a cell's cached views at random, which is the flip / quarter-turn
augmentation of the full path (no colour jitter: that would change the trunk's input).

``--adapt-bn`` re-estimates the trunk's BatchNorm statistics on the site's own cells
(AdaBN, Li et al. 2016) before caching, labelled or not: the scanner and stain of a new
site shift those statistics. The checkpoint records which cells it was adapted on, so a
retrain on the same cells does not redo it (and the trunk, hence the cache, stays the same).

Decisions are taken on ``val`` (the product's fixed evaluation set): the epoch kept is the
one with the best validation balanced accuracy, and the temperature is fitted there, as
``fit`` does. See mlworker/training.md ("Cached-trunk retraining").
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR

from mlworker.calibration import calibrate, softmax_with_temperature
from mlworker.data import CellImages, Sample, collate_cells
from mlworker.model import (
    Checkpoint,
    WBCClassifier,
    make_checkpoint,
    model_from_checkpoint,
    preset_from_checkpoint,
)
from mlworker.presets import EvalPreset, tta_views
from mlworker.score import Scorer, score_labelled
from mlworker.train.batches import class_weights
from mlworker.train.config import TrainConfig
from mlworker.train.loop import report_for
from mlworker.train.progress import ProgressFn
from mlworker.train.splits import class_counts
from mlworker.train.state import TrainResult

logger = logging.getLogger(__name__)

CACHE_FORMAT = "wbc-trunk-cache/1"
ADAPT_MAX_CELLS = 3000  # BatchNorm statistics settle long before this many cells


def _bn_modules(modules: Sequence[nn.Module]) -> list[nn.modules.batchnorm._BatchNorm]:
    return [
        m
        for top in modules
        for m in top.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]


def trunk_fingerprint(model: WBCClassifier, preset: EvalPreset, arch: str, stages: int) -> str:
    """What the cached activations depend on: the trunk's tensors (weights and BatchNorm
    statistics), the arch, the input size, the crop and the views."""
    digest = hashlib.sha256(CACHE_FORMAT.encode())
    digest.update(
        f"{arch}|{stages}|{preset.input_size}|{preset.crop}|{cache_views(preset.tta)}".encode()
    )
    digest.update(repr((preset.mean, preset.std)).encode())
    for module in model.trunk_modules(stages):
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def cache_views(tta: str) -> str:
    """The views cached per cell: the checkpoint's test-time views, and at least the four
    flips, which training draws from (the first ``len(tta_views(x, tta))`` of them are the
    test-time views, identity first)."""
    return "dihedral" if tta == "dihedral" else "flips"


def _n_tta_views(tta: str) -> int:
    return {"none": 1, "flips": 4, "dihedral": 8}[tta]


def _file_key(path: Path) -> str:
    """The cache's name for one image file. The portal stores cells under their SHA-256
    (``cells/ab/<sha256>.jpg``), copied to a fresh scratch folder for every job where the
    storage is remote: such a name is the content itself. Any other file is known by its
    path, size and modification time."""
    stat = path.stat()
    if len(path.stem) == 64 and all(c in "0123456789abcdef" for c in path.stem):
        return hashlib.sha1(f"{path.stem}|{stat.st_size}".encode()).hexdigest()
    return hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()


def _decoded(
    samples: Sequence[Sample], preset: EvalPreset, batch_size: int
) -> tuple[list[tuple[int, torch.Tensor]], dict[int, str]]:
    """(index, uint8 (3, S, S)) for each readable sample, and the errors of the others."""
    loader = torch.utils.data.DataLoader(
        CellImages(list(samples), transform=lambda image: preset.resize(_uint8(image))),
        batch_size=batch_size,
        shuffle=False,
        num_workers=0,
        collate_fn=collate_cells,
    )
    images: list[tuple[int, torch.Tensor]] = []
    errors: dict[int, str] = {}
    for batch in loader:
        errors.update(batch.errors or {})
        if batch.images is not None:
            images.extend(zip(batch.indices, batch.images.unbind(0), strict=True))
    return images, errors


def _uint8(image: torch.Tensor) -> torch.Tensor:
    from mlworker.presets import to_uint8_tensor

    return to_uint8_tensor(image)


@torch.inference_mode()
def adapt_batchnorm(
    model: WBCClassifier,
    samples: Sequence[Sample],
    preset: EvalPreset,
    *,
    batch_size: int = 64,
    heartbeat: Callable[[], None] | None = None,
    stages: int = 1,
) -> int:
    """Re-estimate the trunk's BatchNorm statistics on ``samples`` (AdaBN): a cumulative
    average over every batch, no gradient, weights untouched. Returns the cells used."""
    layers = _bn_modules(model.trunk_modules(stages))
    if not layers or not samples:
        return 0
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative moving average over all batches
    model.eval()
    for layer in layers:
        layer.train()
    used = 0
    for start in range(0, len(samples), batch_size):
        images, _ = _decoded(samples[start : start + batch_size], preset, batch_size)
        if not images:
            continue
        x = preset.normalize(torch.stack([image for _, image in images]))
        model.forward_trunk(x.contiguous(memory_format=torch.channels_last), stages)
        used += len(images)
        if heartbeat is not None:
            heartbeat()
    for layer in layers:
        layer.momentum = 0.1
    model.eval()
    return used


class TrunkCache:
    """Trunk activations per cell, views stacked: ``(V, C, H, W)`` float16, in memory and
    (when ``directory`` is set) in ``directory/<fingerprint>/<file key>.npy``."""

    def __init__(self, directory: Path | None, fingerprint: str, stages: int = 1) -> None:
        self.stages = stages
        self.directory = directory / fingerprint if directory is not None else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0

    def _path(self, sample: Sample) -> Path | None:
        if self.directory is None:
            return None
        try:
            return self.directory / f"{_file_key(Path(sample.path))}.npy"
        except OSError:
            return None

    @torch.inference_mode()
    def activations(
        self,
        model: WBCClassifier,
        samples: Sequence[Sample],
        preset: EvalPreset,
        *,
        batch_size: int = 32,
        heartbeat: Callable[[float], None] | None = None,
    ) -> tuple[list[int], torch.Tensor, dict[int, str]]:
        """(indices of the readable samples, their activations (N, V, C, H, W), errors)."""
        model.eval()
        found: dict[int, torch.Tensor] = {}
        missing: list[int] = []
        for i, sample in enumerate(samples):
            path = self._path(sample)
            if path is not None and path.exists():
                try:
                    found[i] = torch.from_numpy(np.load(path))
                    self.hits += 1
                    continue
                except (OSError, ValueError):
                    pass  # a torn file: recompute it
            missing.append(i)
        errors: dict[int, str] = {}
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            images, chunk_errors = _decoded([samples[i] for i in chunk], preset, batch_size)
            errors.update({chunk[j]: e for j, e in chunk_errors.items()})
            if images:
                x = preset.normalize(torch.stack([image for _, image in images]))
                x = x.contiguous(memory_format=torch.channels_last)
                views = torch.stack(
                    [
                        model.forward_trunk(v, self.stages)
                        for v in tta_views(x, cache_views(preset.tta))
                    ],
                    dim=1,
                ).to(torch.float16)
                for (j, _), activation in zip(images, views.unbind(0), strict=True):
                    index = chunk[j]
                    found[index] = activation.contiguous()
                    self.misses += 1
                    path = self._path(samples[index])
                    if path is not None:
                        tmp = path.with_suffix(".tmp.npy")
                        np.save(tmp, activation.numpy())
                        tmp.replace(path)
            if heartbeat is not None:
                heartbeat(min(1.0, (start + len(chunk)) / max(1, len(missing))))
        indices = sorted(found)
        if not indices:
            return [], torch.zeros(0), errors
        return indices, torch.stack([found[i] for i in indices]), errors


def _tail_parameters(model: WBCClassifier, stages: int) -> list[nn.Parameter]:
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(model.head_parameters()) + [
        p for m in model.tail_modules(stages) for p in m.parameters()
    ]
    for p in params:
        p.requires_grad_(True)
    return params


def _tail_train_mode(model: WBCClassifier, stages: int) -> None:
    model.eval()
    for module in model.tail_modules(stages):
        module.train()
    model.fc.train()


@torch.inference_mode()
def _tail_logits(
    model: WBCClassifier, activations: torch.Tensor, batch_size: int, views: int, stages: int
) -> torch.Tensor:
    """Mean logits over each cell's first ``views`` views, as the Scorer averages its
    test-time views."""
    model.eval()
    out = []
    for start in range(0, activations.shape[0], batch_size):
        chunk = activations[start : start + batch_size, :views].float()
        n, v = chunk.shape[:2]
        logits = model.forward_tail(chunk.flatten(0, 1), stages).float().view(n, v, -1)
        out.append(logits.mean(1))
    return torch.cat(out)


def fit_cached(
    train: Sequence[Sample],
    val: Sequence[Sample],
    config: TrainConfig,
    *,
    init_checkpoint: Checkpoint,
    adapt: Sequence[Sample] = (),
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Retrain the last stage and head of ``init_checkpoint`` on cached trunk activations;
    ``adapt``: the site's cells for ``--adapt-bn`` (labelled or not)."""
    started = time.monotonic()
    if not train or not val:
        raise ValueError(f"fit needs training ({len(train)}) and validation ({len(val)}) images")
    previous_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    last_beat = [0.0]
    epochs = max(1, config.epochs_finetune)
    stages = config.tail_stages

    def send(stage: str, percent: float, log: str | None = None, **extra: Any) -> None:
        now = time.monotonic()
        if progress is None or (log is None and now - last_beat[0] < config.progress_every_s):
            if log:
                logger.info(log)
            return
        last_beat[0] = now
        report: dict[str, Any] = {"stage": stage, "percent": round(percent, 2), **extra}
        if log:
            report["log"] = log
        progress(report)

    try:
        if config.arch != init_checkpoint["arch"]:
            raise ValueError(
                f"--arch {config.arch} differs from the starting checkpoint's "
                f"{init_checkpoint['arch']}; pass --from-scratch to train a new architecture"
            )
        torch.manual_seed(config.seed)
        # the checkpoint's own tensors would be trained in place (model_from_checkpoint
        # assigns them): the caller still needs the parent as it was, to judge against
        parent_weights = {k: v.clone() for k, v in init_checkpoint["model"].items()}
        model = model_from_checkpoint({**init_checkpoint, "model": parent_weights})
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        preset = preset_from_checkpoint(init_checkpoint)
        args = dict(init_checkpoint.get("args") or {})
        adapted_on = args.get("bn_adapted_on")
        if config.adapt_bn and adapt:
            chosen = _adapt_choice(adapt, config.seed)
            key = _cells_key(chosen)
            if key != adapted_on:
                send("adapting", 1, f"re-estimating BatchNorm statistics on {len(chosen)} cells")
                used = adapt_batchnorm(
                    model, chosen, preset, heartbeat=lambda: send("adapting", 2), stages=stages
                )
                adapted_on = key
                send("adapting", 5, f"BatchNorm statistics from {used} of the site's cells")
        fingerprint = trunk_fingerprint(model, preset, str(init_checkpoint["arch"]), stages)
        cache_dir = Path(config.trunk_cache) if config.trunk_cache else None
        cache = TrunkCache(cache_dir, fingerprint, stages)
        everything = [*train, *val]
        send("caching", 5, f"trunk activations for {len(everything)} cells ({fingerprint})")
        indices, activations, errors = cache.activations(
            model,
            everything,
            preset,
            heartbeat=lambda f: send("caching", 5 + 25 * f),
        )
        unreadable = {str(everything[i].path): e for i, e in errors.items()}
        n_train = len(train)
        position = {index: row for row, index in enumerate(indices)}
        train_rows = [position[i] for i in range(n_train) if i in position]
        val_rows = [position[i] for i in range(n_train, len(everything)) if i in position]
        if not train_rows or not val_rows:
            raise ValueError("no readable training or validation image")
        labels = torch.tensor([everything[i].label for i in indices], dtype=torch.long)
        x_train, y_train = activations[train_rows], labels[train_rows]
        x_val, y_val = activations[val_rows], labels[val_rows]
        send(
            "training",
            30,
            f"cached {activations.shape[0]} cells x {activations.shape[1]} views "
            f"({cache.hits} read back, {cache.misses} computed) in "
            f"{time.monotonic() - started:.0f} s",
        )

        n_tta = _n_tta_views(preset.tta)
        params = _tail_parameters(model, stages)
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        batch = config.batch_size
        steps = max(1, math.ceil(len(train_rows) / batch))
        scheduler = CosineAnnealingLR(optimizer, T_max=epochs * steps)
        weights = class_weights(y_train, config.balance_power)
        sample_weights = weights[y_train]
        loss_weights = weights if config.balance == "loss" else None
        # The parent itself is epoch 0: a retrain that no epoch of which beats it on the
        # validation cells returns the parent's weights (few labels can only make it worse).
        start_report = report_for(_tail_logits(model, x_val, 256, n_tta, stages), y_val)
        best: tuple[float, int, dict[str, torch.Tensor]] = (
            start_report["balanced_accuracy"],
            0,
            {k: v.detach().clone() for k, v in model.state_dict().items()},
        )
        history: list[dict[str, Any]] = [
            {
                "stage": "finetune",
                "epoch": 0,
                "val_balanced_accuracy": start_report["balanced_accuracy"],
                "val_accuracy": start_report["accuracy"],
            }
        ]
        generator = torch.Generator().manual_seed(config.seed)
        for epoch in range(1, epochs + 1):
            _tail_train_mode(model, stages)
            if config.balance == "sampler":
                order = torch.multinomial(
                    sample_weights, len(train_rows), replacement=True, generator=generator
                )
            else:
                order = torch.randperm(len(train_rows), generator=generator)
            total_loss, correct = 0.0, 0
            for start in range(0, len(order), batch):
                rows = order[start : start + batch]
                view = torch.randint(x_train.shape[1], (len(rows),), generator=generator)
                xb = x_train[rows, view].float().contiguous(memory_format=torch.channels_last)
                yb = y_train[rows]
                logits = model.forward_tail(xb, stages)
                loss = F.cross_entropy(
                    logits, yb, weight=loss_weights, label_smoothing=config.label_smoothing
                )
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training loss is {loss.item()}; lower --lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                scheduler.step()
                total_loss += float(loss.detach()) * len(rows)
                correct += int((logits.argmax(1) == yb).sum())
                send(
                    "finetune",
                    30 + 60 * (epoch - 1 + start / len(order)) / epochs,
                    epoch=epoch,
                    epochs=epochs,
                )
            val_logits = _tail_logits(model, x_val, 256, n_tta, stages)
            report = report_for(val_logits, y_val)
            record = {
                "stage": "finetune",
                "epoch": epoch,
                "train_loss": total_loss / len(order),
                "train_accuracy": correct / len(order),
                "val_balanced_accuracy": report["balanced_accuracy"],
                "val_accuracy": report["accuracy"],
            }
            history.append(record)
            if report["balanced_accuracy"] > best[0]:
                best = (
                    report["balanced_accuracy"],
                    epoch,
                    {k: v.detach().clone() for k, v in model.state_dict().items()},
                )
            send(
                "finetune",
                30 + 60 * epoch / epochs,
                f"finetune {epoch}/{epochs}: loss {record['train_loss']:.3f}, validation "
                f"balanced accuracy {report['balanced_accuracy']:.3f}",
                epoch=epoch,
                epochs=epochs,
                loss=record["train_loss"],
                accuracy=record["train_accuracy"],
            )
        model.load_state_dict(best[2])
        saved_args = {**config.as_dict(), "bn_adapted_on": adapted_on}
        checkpoint = make_checkpoint(
            model.to(memory_format=torch.contiguous_format),  # type: ignore[call-overload]
            arch=str(init_checkpoint["arch"]),
            input_size=int(init_checkpoint["input_size"]),
            mean=list(init_checkpoint["mean"]),
            std=list(init_checkpoint["std"]),
            temperature=1.0,
            args=saved_args,
            metrics={},
        )
        # Judged and calibrated as the Scorer will run it (from the images, in float32),
        # not on the float16 cache, so that these figures and the guard's paired scoring
        # of the same cells agree.
        send("calibrate", 95, f"scoring the {len(val_rows)} validation cells")
        val_samples = [everything[i] for i in indices if i >= n_train]
        scored = score_labelled(Scorer(checkpoint), val_samples, num_workers=0)
        val_logits = torch.from_numpy(scored.logits)
        y_val = torch.from_numpy(scored.labels)
        unreadable.update(dict(scored.unreadable))
        temperature, calibration = 1.0, {}
        if config.calibrate:
            cal = calibrate(val_logits, y_val)
            temperature, calibration = cal.temperature, cal.as_dict()
        metrics = report_for(val_logits, y_val, temperature)
        metrics.update(
            {
                "n_unreadable": len(unreadable),
                "temperature": temperature,
                "calibration": calibration,
                "weak_classes": {"before": [], "after": [], "ran": False},
                "history": history,
                "ema": None,
                "train_counts": class_counts(train),
                "val_counts": class_counts(val_samples),
                "unreadable": dict(sorted(unreadable.items())),
                "init": "checkpoint",
                "cached_trunk": {
                    "fingerprint": fingerprint,
                    "views": int(activations.shape[1]),
                    "read_back": cache.hits,
                    "computed": cache.misses,
                    "best_epoch": best[1],
                    "tail_stages": stages,
                    "bn_adapted_on": adapted_on,
                    "seconds": round(time.monotonic() - started, 1),
                },
            }
        )
        checkpoint["temperature"] = temperature
        checkpoint["metrics"] = metrics
        send(
            "calibrate",
            99,
            f"calibrated: T = {temperature:.3f}; kept epoch {best[1]}: validation balanced "
            f"accuracy {metrics['balanced_accuracy']:.3f}, "
            f"{time.monotonic() - started:.0f} s in all",
        )
        probabilities = softmax_with_temperature(val_logits, temperature).double().numpy()
        return TrainResult(
            checkpoint=checkpoint,
            metrics=metrics,
            history=history,
            val_samples=val_samples,
            val_labels=y_val.numpy(),
            val_probabilities=probabilities,
            unreadable=unreadable,
        )
    finally:
        torch.set_num_threads(previous_threads)


def _adapt_choice(adapt: Sequence[Sample], seed: int) -> list[Sample]:
    ordered = sorted(adapt, key=lambda s: str(s.path))
    if len(ordered) <= ADAPT_MAX_CELLS:
        return ordered
    rng = np.random.default_rng(seed)
    keep = sorted(rng.choice(len(ordered), ADAPT_MAX_CELLS, replace=False).tolist())
    return [ordered[i] for i in keep]


def _cells_key(samples: Sequence[Sample]) -> str:
    digest = hashlib.sha256()
    for s in samples:
        digest.update(str(s.path).encode() + b"\0")
    return f"{len(samples)}:{digest.hexdigest()[:16]}"


__all__ = ["TrunkCache", "adapt_batchnorm", "fit_cached", "trunk_fingerprint"]
