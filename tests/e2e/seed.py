"""Data for the browser tests, made with the services the product itself uses."""

from __future__ import annotations

import shutil
from pathlib import Path

from annotation.models import Case, ReviewItem
from annotation.services.imports import cells_import
from annotation.services.routing import routing_config_update
from annotation.services.users import user_create_with_role
from tests.annotation.helpers import copy_files, first_images
from tests.annotation.pipeline.fixtures import active_version
from tests.e2e.conftest import PASSWORD, wait_until

PBC_CLASSES = ("NE", "LY", "MO", "EO", "BA", "MY", "ME", "PR", "NR")


def users() -> None:
    user_create_with_role(username="hema", password=PASSWORD, role="hematologist")
    user_create_with_role(username="boss", password=PASSWORD, role="admin")


def queued_smear(tmp_path: Path, shared_data: Path, n: int, *, log: Path | None = None) -> Case:
    """``n`` real unlabelled cells in case SMEAR-1, segmented and scored by the real
    worker with a tiny active model, every one of them queued (low confidence)."""
    active_version(tmp_path)
    routing_config_update(user=None, audit_rate=0.0, confidence_threshold=0.99)
    folder = tmp_path / "smear"
    per_class = -(-n // len(PBC_CLASSES))
    images = [
        img for code in PBC_CLASSES for img in first_images(shared_data / "pbc" / code, per_class)
    ]
    copy_files(images[:n], folder)
    summary = cells_import(source=folder, case_name="SMEAR-1")
    assert summary.new_cells == n, summary
    wait_until(
        lambda: ReviewItem.objects.filter(status="queued").count() == n,
        240, f"{n} cells segmented, scored and queued by the worker", log,
    )  # fmt: skip
    return Case.objects.get(accession_id="SMEAR-1")


def labelled_case(tmp_path: Path, shared_data: Path, per_class: dict[str, int]) -> Case:
    """Case REVIEW-1: cells labelled by class folder, plus one image filed under two
    classes (a conflicting cell nobody has settled), imported without processing."""
    root = tmp_path / "review"
    for code, n in per_class.items():
        copy_files(first_images(shared_data / "pbc" / code, n), root / code)
    twin = first_images(shared_data / "pbc" / "EO", 1)[0]
    for code in ("EO", "BA"):
        (root / code).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(twin, root / code / twin.name)
    summary = cells_import(source=root, case_name="REVIEW-1", enqueue_processing=False)
    assert summary.conflicting == 1, summary
    return Case.objects.get(accession_id="REVIEW-1")


def labelled_training_set(tmp_path: Path, shared_data: Path, per_class: int) -> None:
    """Labelled cells of every PBC class (case TRAIN-1) for a retraining run."""
    root = tmp_path / "train"
    for code in PBC_CLASSES:
        copy_files(first_images(shared_data / "pbc" / code, per_class), root / code)
    cells_import(source=root, case_name="TRAIN-1", enqueue_processing=False)
