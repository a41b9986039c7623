"""From labelled folders to a training and a validation list.

- ``deduplicate``: identical files (same SHA-256) are one image. One filed under two
  different classes has no trustworthy label: every copy is left out and counted.
- ``cap_per_class``: at most N images per class (the paper's 2,500), chosen at random.
- ``split_train_val``: stratified by class; images with a ``patient`` are split by
  patient, so no patient has images on both sides (cells of one patient are correlated).
  Images without a patient (e.g. PBC) are split image by image within each class.
- ``split_train_val_test``: the same rules, three ways: train, validation (every decision:
  early stopping, calibration, the promotion guard) and test (reported, never used to
  decide anything, so its numbers are not flattered by the choices made on validation).

The CLI and the product's fixed evaluation set (annotation/services/training/dataset.py,
which passes the case as the patient) both split with these, so the two cannot disagree.
Anything with ``code`` and ``patient`` can be split (``Splittable``), not only ``Sample``.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from mlworker import taxonomy
from mlworker.data import Sample

logger = logging.getLogger(__name__)


class Splittable(Protocol):
    """What the splitters read: a class and, when known, a patient (or case)."""

    @property
    def code(self) -> str | None: ...

    @property
    def patient(self) -> str | None: ...


SplittableT = TypeVar("SplittableT", bound=Splittable)


def class_counts(samples: Iterable[Sample]) -> dict[str, int]:
    """Images per 14-Diff code, in taxonomy order, classes without images left out."""
    counts = Counter(s.code for s in samples if s.code is not None)
    return {code: counts[code] for code in taxonomy.CODES if counts[code]}


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None  # unreadable: the training data loader reports it once


@dataclass
class DedupReport:
    kept: list[Sample]
    duplicates: int = 0  # extra copies of an image under the same class
    conflicting: list[dict[str, list[str]]] = field(default_factory=list)  # under 2+ classes

    def as_dict(self) -> dict[str, object]:
        return {
            "duplicates_dropped": self.duplicates,
            "conflicting_images": len(self.conflicting),
            "conflicting_files_dropped": sum(len(c["paths"]) for c in self.conflicting),
            "conflicting": self.conflicting,
        }


def deduplicate(samples: Sequence[Sample]) -> DedupReport:
    """Keep one copy per identical file; drop every copy of a file under 2+ classes."""
    by_digest: dict[str, list[Sample]] = defaultdict(list)
    unhashed: list[Sample] = []
    for sample in samples:
        digest = _digest(sample.path)
        if digest is None:
            unhashed.append(sample)
        else:
            by_digest[digest].append(sample)
    report = DedupReport(kept=list(unhashed))
    for copies in by_digest.values():
        codes = sorted({str(s.code) for s in copies})
        if len(codes) > 1:
            report.conflicting.append({"codes": codes, "paths": [str(s.path) for s in copies]})
            logger.warning(
                "left out, filed under %s: %s",
                " and ".join(codes),
                ", ".join(str(s.path) for s in copies),
            )
            continue
        report.kept.append(copies[0])
        report.duplicates += len(copies) - 1
    order = {id(s): i for i, s in enumerate(samples)}
    report.kept.sort(key=lambda s: order[id(s)])
    return report


def cap_per_class(samples: Sequence[Sample], cap: int, seed: int) -> list[Sample]:
    """At most ``cap`` images per class, a seeded random choice; order kept."""
    rng = random.Random(seed)
    by_class: dict[str | None, list[int]] = defaultdict(list)
    for i, sample in enumerate(samples):
        by_class[sample.code].append(i)
    keep: set[int] = set()
    for indices in by_class.values():
        keep.update(indices if len(indices) <= cap else rng.sample(indices, cap))
    return [s for i, s in enumerate(samples) if i in keep]


def _split_ungrouped(
    samples: list[SplittableT], fraction: float, rng: random.Random
) -> tuple[list[SplittableT], list[SplittableT]]:
    by_class: dict[str | None, list[SplittableT]] = defaultdict(list)
    for sample in samples:
        by_class[sample.code].append(sample)
    train: list[SplittableT] = []
    val: list[SplittableT] = []
    for code in sorted(by_class, key=str):
        items = by_class[code][:]
        rng.shuffle(items)
        n_val = round(len(items) * fraction)
        if len(items) >= 2:
            n_val = min(max(n_val, 1), len(items) - 1)  # both sides see the class
        val.extend(items[:n_val])
        train.extend(items[n_val:])
    return train, val


def _split_grouped(
    samples: list[SplittableT], fraction: float, rng: random.Random
) -> tuple[list[SplittableT], list[SplittableT]]:
    """Assign whole patients to validation, greedily keeping each class near ``fraction``.

    Patients holding the rarest classes are placed first (they decide whether a rare class
    appears on both sides at all); each goes where the per-class validation shares end up
    closest to the target.
    """
    groups: dict[str, list[SplittableT]] = defaultdict(list)
    for sample in samples:
        groups[str(sample.patient)].append(sample)
    totals = Counter(s.code for s in samples)
    group_counts = {g: Counter(s.code for s in items) for g, items in groups.items()}
    names = sorted(groups)
    rng.shuffle(names)

    def rarity(name: str) -> float:
        return max(n / totals[c] for c, n in group_counts[name].items())

    names.sort(key=rarity, reverse=True)  # stable: ties keep the shuffled order
    in_val: Counter[str | None] = Counter()
    val_groups: set[str] = set()

    def cost(val_counts: Counter[str | None]) -> float:
        return sum((val_counts[code] / n - fraction) ** 2 for code, n in totals.items())

    for name in names:
        counts = group_counts[name]
        if cost(in_val + counts) < cost(in_val):
            in_val += counts
            val_groups.add(name)
    # Then improve by moving one patient, or swapping two, while that brings the
    # per-class shares closer to the target (greedy order alone leaves some far off).
    improved = True
    while improved:
        improved = False
        current = cost(in_val)
        for name in names:
            moved = (
                in_val - group_counts[name] if name in val_groups else in_val + group_counts[name]
            )
            if cost(moved) < current - 1e-12:
                in_val = moved
                val_groups ^= {name}
                current, improved = cost(in_val), True
        for a in [n for n in names if n in val_groups]:
            for b in [n for n in names if n not in val_groups]:
                swapped = in_val - group_counts[a] + group_counts[b]
                if cost(swapped) < current - 1e-12:
                    in_val = swapped
                    val_groups ^= {a, b}
                    current, improved = cost(in_val), True
                    break
    train = [s for s in samples if str(s.patient) not in val_groups]
    val = [s for s in samples if str(s.patient) in val_groups]
    return train, val


def split_train_val(
    samples: Sequence[SplittableT], fraction: float = 0.3, seed: int = 0
) -> tuple[list[SplittableT], list[SplittableT]]:
    """Stratified train/validation split; patient-disjoint where patients are known.

    Deterministic for a given ``seed``; both lists keep the input order.
    """
    rng = random.Random(seed)
    grouped = [s for s in samples if s.patient]
    ungrouped = [s for s in samples if not s.patient]
    train_u, val_u = _split_ungrouped(ungrouped, fraction, rng)
    train_g, val_g = _split_grouped(grouped, fraction, rng) if grouped else ([], [])
    order = {id(s): i for i, s in enumerate(samples)}
    train = sorted(train_u + train_g, key=lambda s: order[id(s)])
    val = sorted(val_u + val_g, key=lambda s: order[id(s)])
    return train, val


def split_train_val_test(
    samples: Sequence[SplittableT],
    val_fraction: float = 0.2,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> tuple[list[SplittableT], list[SplittableT], list[SplittableT]]:
    """Train / validation / test, each stratified by class and patient-disjoint from the
    others where patients are known.

    The test side is taken first and the validation side from what is left (its fraction
    rescaled so both end near their share of the whole), so the test patients never depend
    on the validation choice. ``test_fraction=0`` gives the two-way split (test empty).
    """
    if not 0 < val_fraction < 1 or not 0 <= test_fraction < 1:
        raise ValueError(
            f"fractions must lie in (0, 1) for validation and [0, 1) for test; got "
            f"{val_fraction} and {test_fraction}"
        )
    if val_fraction + test_fraction >= 1:
        raise ValueError(
            f"validation ({val_fraction}) and test ({test_fraction}) leave nothing to train on"
        )
    if test_fraction == 0:
        train, val = split_train_val(samples, val_fraction, seed)
        return train, val, []
    rest, test = split_train_val(samples, test_fraction, seed)
    train, val = split_train_val(rest, val_fraction / (1 - test_fraction), seed + 1)
    return train, val, test
