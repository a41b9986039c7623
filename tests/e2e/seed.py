"""Data for the browser tests, made with the services the product itself uses."""

from __future__ import annotations

import shutil
from pathlib import Path

from annotation.models import Case, CellImage, ModelVersion, Prediction, ReviewItem
from annotation.services.imports import cells_import
from annotation.services.review_queue import review_item_submit, review_items_next
from annotation.services.routing import cells_route, routing_config_update
from annotation.services.users import user_create_with_role
from mlworker.taxonomy import CODES
from tests.annotation.helpers import copy_files, first_images
from tests.annotation.pipeline.fixtures import active_version
from tests.e2e.conftest import PASSWORD, wait_until

PBC_CLASSES = ("NE", "LY", "MO", "EO", "BA", "MY", "ME", "PR", "NR")


def predict_ly_and_route(cells: list[CellImage], version: ModelVersion) -> None:
    """Every cell predicted LY at 0.7 (below the seeds' 0.99 threshold), then routed."""
    for cell in cells:
        probs = [0.3 / 13] * len(CODES)
        probs[CODES.index("LY")] = 0.7
        Prediction.objects.create(
            cell=cell, model_version=version, probabilities=probs, top_code="LY",
            confidence=0.7, margin=0.6, entropy=1.0,
        )  # fmt: skip
    cells_route(cell_ids=[c.pk for c in cells], version=version)


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


def double_read_case(tmp_path: Path, shared_data: Path, reads: dict[str, list[str]]) -> Case:
    """Case DOUBLE-1: one real cell per position of the readers' lists, every cell read
    independently by each reader (hematologists of these names, made here) through the
    review queue, in this order, with the classes given. Cells whose reads differ wait
    for adjudication. The model's predictions are set, not computed (no worker needed)."""
    n = len(next(iter(reads.values())))
    assert all(len(codes) == n for codes in reads.values()) and n <= 10, reads
    copy_files(first_images(shared_data / "pbc" / "LY", n), tmp_path / "double")
    cells_import(source=tmp_path / "double", case_name="DOUBLE-1", enqueue_processing=False)
    case = Case.objects.get(accession_id="DOUBLE-1")
    Case.objects.filter(pk=case.pk).update(labels_required=len(reads))
    routing_config_update(user=None, audit_rate=0.0, confidence_threshold=0.99)
    version = ModelVersion.objects.create(
        name="seed-v1", arch="resnet18", class_codes=list(CODES), status="active",
        per_class_tpr=dict.fromkeys(CODES, 0.95),
    )  # fmt: skip
    cells = list(CellImage.objects.filter(case=case).order_by("id"))
    predict_ly_and_route(cells, version)
    position = {cell.pk: i for i, cell in enumerate(cells)}
    for name, codes in reads.items():
        reader = user_create_with_role(username=name, password=PASSWORD, role="hematologist")
        items = review_items_next(user=reader, count=n)
        assert len(items) == n, f"{name} leased {len(items)} of {n} cells"
        for item in items:
            review_item_submit(item_id=item.pk, user=reader, code=codes[position[item.cell_id]])
    return case


def senior(username: str = "senior") -> None:
    user_create_with_role(username=username, password=PASSWORD, role="senior_hematologist")
