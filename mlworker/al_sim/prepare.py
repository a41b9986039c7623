"""Everything the simulation computes once: decoded images, the split, the base model, features.

Each step caches its result under the cache folder, keyed by what it depends on, so a
second run (another strategy list, more repeats) starts at the rounds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from mlworker import taxonomy
from mlworker.data import CellImages, Sample, collate_cells, discover_samples
from mlworker.device import choose_runtime
from mlworker.model import (
    Checkpoint,
    build_classifier,
    input_scaling,
    load_checkpoint,
    make_checkpoint,
    save_checkpoint,
)
from mlworker.presets import EvalPreset, normalization
from mlworker.score import Scorer

logger = logging.getLogger(__name__)


@dataclass
class DecodedSet:
    """A labelled folder decoded and resized once: uint8 (N, 3, S, S) and its metadata."""

    images: torch.Tensor
    labels: np.ndarray  # class index in taxonomy.CODES
    paths: list[str]
    patients: list[str | None]
    unreadable: dict[str, str]  # path -> reason
    ambiguous: list[str]  # same bytes filed under two classes: left out
    duplicates: list[str]  # same bytes, same class, second copy: left out


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _content_hashes(samples: Sequence[Sample]) -> list[str | None]:
    out: list[str | None] = []
    for s in samples:
        try:
            out.append(hashlib.sha256(s.path.read_bytes()).hexdigest())
        except OSError:
            out.append(None)
    return out


def decode_folder(
    root: str | Path,
    size: int,
    cache_dir: Path | None = None,
    limit_per_class: int | None = None,
    workers: int = 0,
    crop: float = 1.0,
) -> DecodedSet:
    """Decode a labelled folder at ``size`` x ``size`` (the EvalPreset resize, after its
    centre crop when ``crop`` < 1: the cell gets more of the pixels).

    Unreadable files are left out and reported. An image whose exact bytes appear under
    two classes has no single ground truth, so every copy is left out; an exact duplicate
    within one class is kept once (a hematologist labels a cell once).
    """
    root = Path(root).resolve()
    samples = discover_samples(root)
    if limit_per_class is not None:
        per: dict[str, int] = {}
        kept = []
        for s in samples:
            if per.get(s.code or "", 0) < limit_per_class:
                per[s.code or ""] = per.get(s.code or "", 0) + 1
                kept.append(s)
        samples = kept
    paths = [str(s.path) for s in samples]
    key = _key("decode/1", str(root), size, paths, *([crop] if crop != 1.0 else []))
    cache = None if cache_dir is None else cache_dir / f"decoded-{root.name}-{size}-{key}.pt"
    if cache is not None and cache.is_file():
        d = torch.load(cache, weights_only=True)
        return DecodedSet(
            images=d["images"],
            labels=np.asarray(d["labels"], dtype=np.int64),
            paths=list(d["paths"]),
            patients=list(d["patients"]),
            unreadable=dict(d["unreadable"]),
            ambiguous=list(d["ambiguous"]),
            duplicates=list(d["duplicates"]),
        )
    start = time.perf_counter()
    hashes = _content_hashes(samples)
    codes_by_hash: dict[str, set[str | None]] = {}
    for h, s in zip(hashes, samples, strict=True):
        if h is not None:
            codes_by_hash.setdefault(h, set()).add(s.code)
    ambiguous = [
        str(s.path)
        for h, s in zip(hashes, samples, strict=True)
        if h is not None and len(codes_by_hash[h]) > 1
    ]
    seen: set[str] = set()
    duplicates: list[str] = []
    keep: list[int] = []
    for i, (h, s) in enumerate(zip(hashes, samples, strict=True)):
        if h is not None and len(codes_by_hash[h]) > 1:
            continue
        if h is not None and h in seen:
            duplicates.append(str(s.path))
            continue
        if h is not None:
            seen.add(h)
        keep.append(i)
    samples = [samples[i] for i in keep]
    preset = EvalPreset(size, crop=crop)
    loader = DataLoader(
        CellImages(samples, transform=preset.resize),
        batch_size=128,
        num_workers=workers,
        collate_fn=collate_cells,
    )
    images: list[torch.Tensor] = []
    good: list[int] = []
    unreadable: dict[str, str] = {}
    for batch in loader:  # CellImages entries carry their dataset index
        for index, reason in (batch.errors or {}).items():
            unreadable[str(samples[index].path)] = reason
        if batch.images is not None:
            images.append(batch.images)
            good.extend(batch.indices)
    result = DecodedSet(
        images=torch.cat(images) if images else torch.zeros(0, 3, size, size, dtype=torch.uint8),
        labels=np.array([samples[i].label for i in good], dtype=np.int64),
        paths=[str(samples[i].path) for i in good],
        patients=[samples[i].patient for i in good],
        unreadable=unreadable,
        ambiguous=ambiguous,
        duplicates=duplicates,
    )
    logger.info(
        "%s: %d images decoded at %d px in %.1f s (%d unreadable, %d ambiguous, %d duplicates)",
        root.name,
        len(good),
        size,
        time.perf_counter() - start,
        len(unreadable),
        len(ambiguous),
        len(duplicates),
    )
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp")
        torch.save(
            {
                "images": result.images,
                "labels": result.labels.tolist(),
                "paths": result.paths,
                "patients": [p or "" for p in result.patients],
                "unreadable": result.unreadable,
                "ambiguous": result.ambiguous,
                "duplicates": result.duplicates,
            },
            tmp,
        )
        tmp.replace(cache)
    return result


def patient_split(
    labels: np.ndarray,
    patients: Sequence[str | None],
    test_fraction: float,
    seed: int,
    trials: int = 500,
) -> np.ndarray:
    """Boolean test mask: whole patients, about ``test_fraction`` of the cells.

    Of ``trials`` random patient orders, the one kept has the most classes present on
    both sides, then per-class test shares closest to ``test_fraction``. Cells without a
    patient are each their own patient.
    """
    ids = [p if p else f"cell-{i}" for i, p in enumerate(patients)]
    unique = sorted(set(ids))
    index_of = {p: k for k, p in enumerate(unique)}
    cell_patient = np.array([index_of[p] for p in ids])
    k = len(taxonomy.CODES)
    counts = np.zeros((len(unique), k))
    np.add.at(counts, (cell_patient, labels), 1)
    total = counts.sum(axis=0)
    present = total > 0
    rng = np.random.default_rng(seed)
    best: tuple[float, float] | None = None
    best_test: np.ndarray | None = None
    target = test_fraction * len(labels)
    for _ in range(trials):
        order = rng.permutation(len(unique))
        cum = np.cumsum(counts[order].sum(axis=1))
        n_test = int(np.searchsorted(cum, target)) + 1
        test_patients = order[:n_test]
        test_counts = counts[test_patients].sum(axis=0)
        both = int(((test_counts > 0) & (test_counts < total))[present].sum())
        share = test_counts[present] / total[present]
        score = (float(both), -float(np.abs(share - test_fraction).mean()))
        if best is None or score > best:
            best, best_test = score, test_patients
    assert best_test is not None
    return np.isin(cell_patient, best_test)


# --- the base model ----------------------------------------------------------------------


@dataclass(frozen=True)
class BaseConfig:
    arch: str = "resnet18"
    image_size: int = 64
    epochs: int = 10
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    seed: int = 0
    # Centre crop applied when the images were decoded (the model sees them as they are).
    crop: float = 1.0


def _compute_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (None: leave as is); return the previous value."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    return previous


def augment_batch(
    images: torch.Tensor, preset: EvalPreset, generator: torch.Generator, jitter: float = 0.1
) -> torch.Tensor:
    """``TrainPreset``'s augmentations for a whole uint8 batch at once: flips, quarter
    turns, brightness/contrast/saturation jitter (no hue), then the preset's normalisation.

    ``TrainPreset`` works image by image and its hue jitter alone costs tens of ms per
    image on this CPU, more than the 64 px forward and backward pass; batched, the same
    augmentation is a few ms per batch.
    """
    b = images.shape[0]
    x = images.to(torch.float32).div_(255.0)

    def coin() -> torch.Tensor:
        return (torch.rand(b, generator=generator) < 0.5).view(b, 1, 1, 1)

    x = torch.where(coin(), x.flip(3), x)
    x = torch.where(coin(), x.flip(2), x)
    turns = torch.randint(0, 4, (b,), generator=generator)
    for q in (1, 2, 3):
        sel = turns == q
        if sel.any():
            x[sel] = torch.rot90(x[sel], q, dims=(2, 3))

    def factor() -> torch.Tensor:
        return (1 + jitter * (2 * torch.rand(b, generator=generator) - 1)).view(b, 1, 1, 1)

    x = x * factor()
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    mean = grey.mean(dim=(2, 3), keepdim=True)
    x = (x - mean) * factor() + mean
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    x = (x - grey) * factor() + grey
    x = x.clamp_(0, 1)
    mean_t = torch.tensor(preset.mean).view(1, 3, 1, 1)
    std_t = torch.tensor(preset.std).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


def train_base_model(
    data: DecodedSet, config: BaseConfig, cache_dir: Path | None, threads: int | None = 1
) -> Checkpoint:
    """Train every layer of a small ResNet on the base data (or load it from the cache).

    AdamW with a one-cycle schedule, the product's train-time augmentation
    (``augment_batch``: flips, quarter turns, colour jitter) and class-weighted
    cross-entropy. No pretrained weights exist on this machine, so it starts from random
    initialisation; a few epochs at 64 px give a backbone whose features separate the
    base classes, which is what the product's later head-only retraining relies on.

    ``threads``: torch compute threads while training. On a shared, loaded machine one
    thread is several times faster than two oversubscribed ones (as mlworker/training.md
    measured); pass None to keep torch's default on a machine of one's own.
    """
    settings = {k: v for k, v in config.__dict__.items() if k != "crop" or v != 1.0}
    key = _key("base/1", settings, data.paths, data.labels.tolist())
    cache = None if cache_dir is None else cache_dir / f"base-{config.arch}-{key}.pt"
    if cache is not None and cache.is_file():
        logger.info("base model from cache %s", cache)
        return load_checkpoint(cache, arch=config.arch)
    previous_threads = _compute_threads(threads)
    try:
        return _train_base_model(data, config, cache)
    finally:
        torch.set_num_threads(previous_threads)


def _train_base_model(data: DecodedSet, config: BaseConfig, cache: Path | None) -> Checkpoint:
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    runtime = choose_runtime(precision="fp32")
    model = build_classifier(config.arch, len(taxonomy.CODES), weights=None)
    runtime.prepare_model(model)  # in place: .to() returns the same module
    # the arch's input scaling, which make_checkpoint records and Scorer then applies
    preset = EvalPreset(config.image_size, *normalization(input_scaling(config.arch)))
    labels = torch.as_tensor(data.labels)
    counts = torch.bincount(labels, minlength=len(taxonomy.CODES)).float()
    weight = torch.where(counts > 0, counts.sum() / (counts.clamp_min(1) * (counts > 0).sum()), 0)
    criterion = nn.CrossEntropyLoss(weight=weight.to(runtime.device))
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    steps_per_epoch = math.ceil(len(labels) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch
    )
    generator = torch.Generator().manual_seed(config.seed)
    model.train()
    for epoch in range(config.epochs):
        order = torch.randperm(len(labels), generator=generator)
        total, correct, seen = 0.0, 0, 0
        for start_at in range(0, len(order), config.batch_size):
            idx = order[start_at : start_at + config.batch_size]
            if len(idx) < 2:
                continue
            x = augment_batch(data.images[idx], preset, generator)
            x = runtime.prepare_batch(x)
            y = labels[idx].to(runtime.device)
            logits = model(x)
            loss = criterion(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(idx)
        logger.info(
            "base epoch %d/%d: loss %.3f, train accuracy %.3f (%.0f s)",
            epoch + 1,
            config.epochs,
            total / seen,
            correct / seen,
            time.perf_counter() - start,
        )
    model.eval()
    checkpoint = make_checkpoint(
        model.cpu(),
        arch=config.arch,
        input_size=config.image_size,
        args={"al_sim_base": config.__dict__},
        metrics={"train_seconds": time.perf_counter() - start},
    )
    if cache is not None:
        save_checkpoint(checkpoint, cache)
    return checkpoint


@dataclass
class PoolFeatures:
    features: np.ndarray  # (N, d) pooled backbone features, float32
    probs: np.ndarray  # (N, 14) the base model's probabilities


def extract_features(
    checkpoint: Checkpoint, images: torch.Tensor, cache: Path | None = None
) -> PoolFeatures:
    """Pooled features and probabilities through the product's ``Scorer``."""
    if cache is not None and cache.is_file():
        d = np.load(cache)
        return PoolFeatures(features=d["features"], probs=d["probs"])
    scores = Scorer(checkpoint, runtime=choose_runtime(precision="fp32")).score(
        images, batch_size=256, num_workers=0
    )
    features = np.stack([s.features for s in scores]).astype(np.float32)  # type: ignore[misc]
    probs = np.stack([s.probabilities for s in scores]).astype(np.float64)  # type: ignore[misc]
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, features=features, probs=probs)
    return PoolFeatures(features=features, probs=probs)


def features_cache_path(
    cache_dir: Path | None, checkpoint: Checkpoint, data: DecodedSet
) -> Path | None:
    if cache_dir is None:
        return None
    fc = checkpoint["model"]["fc.weight"]
    key = _key("features/1", float(fc.abs().sum()), float(fc[0, :8].sum()), data.paths)
    return cache_dir / f"features-{key}.npz"
