"""Training data: images decoded once, the sampling order of an epoch, its batches.

The order and the augmentations of an epoch draw only from the generator they are given,
so an epoch seeded the same way sees the same images in the same order with the same
flips (what makes a resumed run end with the weights of an uninterrupted one).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from mlworker import taxonomy
from mlworker.data import CellImages, Sample, collate_cells
from mlworker.model import input_scaling
from mlworker.presets import EvalPreset, TrainPreset, normalization, to_uint8_tensor
from mlworker.train.config import TrainConfig

logger = logging.getLogger(__name__)

CODES = taxonomy.CODES
Batch = tuple[torch.Tensor, torch.Tensor, dict[int, str]]  # images, labels, errors by index


@dataclass
class PreparedImages:
    """The readable images of a split: decoded once (``images``) or read every epoch."""

    samples: list[Sample]
    labels: torch.Tensor
    images: torch.Tensor | None  # uint8 (N, 3, S, S) when cached
    unreadable: dict[str, str]


def input_normalization(config: TrainConfig) -> tuple[Sequence[float], Sequence[float]]:
    """(mean, std) of the arch's pretraining (ImageNet's for a ResNet, TF-Lite's
    ``(x - 127) / 128`` for an EfficientNet-Lite): training batches, validation and the
    checkpoint (which scoring follows) all take it from here, so they cannot disagree."""
    return normalization(input_scaling(config.arch))


def default_workers() -> int:
    """Decode workers for images read from files (cached images need none)."""
    cores = os.cpu_count() or 1
    return max(1, min(8, cores // 2)) if torch.cuda.is_available() else max(1, cores // 4)


def workers_for(config: TrainConfig) -> int:
    return config.workers if config.workers is not None else default_workers()


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
    workers = workers_for(config) if len(samples) > 64 else 0
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


def class_weights(labels: torch.Tensor, power: float) -> torch.Tensor:
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
    per_class = class_weights(labels, power).double()
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


def training_order(
    data: PreparedImages,
    config: TrainConfig,
    generator: torch.Generator,
    *,
    boost: Sequence[str] = (),
    source_of: Mapping[str, str] | None = None,
) -> torch.Tensor:
    """The dataset indices one epoch trains on, in order.

    A plain shuffle, or (``--balance sampler``, or classes to ``boost`` in the weak pass)
    a weighted draw with replacement of as many images as there are.
    """
    labels = data.labels
    n = len(labels)
    if config.balance != "sampler" and not boost:
        return torch.randperm(n, generator=generator)
    if config.balance == "sampler":
        sources = None
        if config.balance_sources and source_of is not None:
            sources = [source_of.get(str(s.path), "?") for s in data.samples]
        weights = sample_weights(labels, config.balance_power, sources)
    else:
        weights = torch.ones(n, dtype=torch.float64)
    boost_factor = torch.ones(len(CODES), dtype=torch.float64)
    for code in boost:
        boost_factor[taxonomy.index_of(code)] = config.weak_oversample
    weights = weights * boost_factor[labels]
    return torch.multinomial(weights, n, replacement=True, generator=generator)


def batches_for_training(
    data: PreparedImages,
    order: torch.Tensor,
    config: TrainConfig,
    generator: torch.Generator,
    skip: set[int],
) -> Iterator[Batch]:
    """(images, labels, errors by dataset index) for one epoch in ``order``."""
    mean, std = input_normalization(config)
    preset = TrainPreset(
        config.image_size,
        mean,
        std,
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
    workers = workers_for(config)
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
