"""Fixtures for the API tests: one user and token client per role, a small case."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotation.models import (
    Case,
    CellImage,
    Label,
    ModelVersion,
    Prediction,
    ReviewItem,
    Segmentation,
)
from annotation.services.roles import ROLES
from annotation.services.users import user_create_with_role
from mlworker.taxonomy import CODES

PASSWORD = "a-Long-test-passw0rd"


@pytest.fixture
def users(db: None) -> dict[str, Any]:
    return {
        role: user_create_with_role(username=f"u_{role}", password=PASSWORD, role=role)
        for role in ROLES
    }


@pytest.fixture
def clients(users: dict[str, Any]) -> dict[str, APIClient]:
    """A token-authenticated client per role, and "anonymous"."""
    out = {"anonymous": APIClient()}
    for role, user in users.items():
        client = APIClient()
        token, _ = Token.objects.get_or_create(user=user)
        client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
        out[role] = client
    return out


@pytest.fixture
def admin_api(clients: dict[str, APIClient]) -> APIClient:
    return clients["admin"]


@pytest.fixture
def heme_api(clients: dict[str, APIClient]) -> APIClient:
    return clients["hematologist"]


@pytest.fixture
def ds_api(clients: dict[str, APIClient]) -> APIClient:
    return clients["data_scientist"]


def jpeg(seed: int, size: tuple[int, int] = (64, 64)) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=80)
    return buf.getvalue()


def mask_png(width: int = 64, height: int = 64) -> bytes:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[10:50, 12:52] = 128
    mask[20:40, 22:42] = 255
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, "PNG")
    return buf.getvalue()


_seed = iter(range(1, 10_000_000))


@pytest.fixture
def make_cell(db: None) -> Callable[..., CellImage]:
    def make(case: Case, *, label: str | None = None, annotator: Any = None) -> CellImage:
        import hashlib

        data = jpeg(next(_seed))
        sha = hashlib.sha256(data).hexdigest()
        name = default_storage.save(f"cells/{sha[:2]}/{sha}.jpg", ContentFile(data))
        cell = CellImage.objects.create(
            case=case, image=name, sha256=sha, width=64, height=64, original_filename=f"{sha}.jpg"
        )
        if label:
            lbl = Label.objects.create(
                cell=cell,
                code=label,
                source="hematologist" if annotator else "imported",
                annotator=annotator,
            )
            cell.current_label = lbl
            cell.save(update_fields=["current_label"])
        return cell

    return make


@pytest.fixture
def active_model(db: None) -> ModelVersion:
    return ModelVersion.objects.create(
        name="v-active",
        arch="resnet152",
        class_codes=list(CODES),
        status=ModelVersion.Status.ACTIVE,
        metrics={"balanced_accuracy": 0.9},
        per_class_tpr={c: 0.9 for c in CODES},
    )


def predict(cell: CellImage, version: ModelVersion, code: str, confidence: float) -> Prediction:
    probs = [(1 - confidence) / 13] * 14
    probs[CODES.index(code)] = confidence
    return Prediction.objects.create(
        cell=cell,
        model_version=version,
        probabilities=probs,
        top_code=code,
        confidence=confidence,
        margin=confidence - probs[0 if code != CODES[0] else 1],
        entropy=1.0,
    )


def segment(cell: CellImage) -> Segmentation:
    name = default_storage.save(f"masks/{cell.sha256}.png", ContentFile(mask_png()))
    return Segmentation.objects.create(
        cell=cell, method_version="test-1", status="ok", mask=name, quality=0.9
    )


def queue(cell: CellImage, version: ModelVersion | None, reasons: list[str]) -> ReviewItem:
    return ReviewItem.objects.create(
        cell=cell, reasons=reasons, priority=1.0, model_version=version
    )


@pytest.fixture
def smear(make_cell: Callable[..., CellImage], active_model: ModelVersion, users: dict[str, Any]):
    """A case of 8 cells: 5 labelled (NE NE LY BL NR), 3 unlabelled with predictions
    (MO, MY, LY at low confidence and queued), one with a mask."""
    case = Case.objects.create(accession_id="SMEAR-1", diagnosis="AML")
    heme = users["hematologist"]
    cells = [make_cell(case, label=c, annotator=heme) for c in ("NE", "NE", "LY", "BL", "NR")]
    extra = [make_cell(case) for _ in range(3)]
    for cell, code in zip(cells, ("NE", "NE", "LY", "MY", "NR"), strict=True):
        predict(cell, active_model, code, 0.9)
    predict(extra[0], active_model, "MO", 0.95)
    predict(extra[1], active_model, "MY", 0.85)
    predict(extra[2], active_model, "LY", 0.40)
    queue(extra[2], active_model, ["low_confidence"])
    segment(cells[0])
    return {"case": case, "labelled": cells, "unlabelled": extra}
