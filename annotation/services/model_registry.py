"""Model versions: register, promote (with the no-regression guard), roll back.

The guard itself is a rule without database access (annotation/rules.py), shared with the
comparison selector so that "would pass" and "was promoted" never disagree."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.files.base import File
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.utils import timezone

from annotation.errors import ApplicationError, get_or_404
from annotation.models import CellImage, ModelVersion
from annotation.rules import guard_comparison, per_class_tpr
from annotation.services.audit import audit_event_create
from annotation.services.events import JOBS_GROUP, broadcast
from annotation.services.pipeline import gold_cells_enqueue_scoring
from annotation.services.routing import review_queue_reset_for_new_version
from annotation.storage import storage_local_path, storage_read_bytes
from annotation.types import UserLike

if TYPE_CHECKING:
    import torch

    from mlworker.model import Checkpoint
    from mlworker.score import Scorer

# mlworker.model pulls in torch (about 6 s and 300 MB): imported where a checkpoint is
# read, so the web process, which only lists versions, never loads it.


def _next_name() -> str:
    return f"v{ModelVersion.objects.count() + 1}"


def model_version_register(
    *,
    checkpoint_path: Path,
    user: UserLike | None = None,
    name: str | None = None,
    status: str = ModelVersion.Status.CANDIDATE,
    parent: ModelVersion | None = None,
    metrics: dict[str, Any] | None = None,
    training_snapshot: dict[str, Any] | None = None,
    triggered_by: str = "admin",
) -> ModelVersion:
    """Validate a checkpoint file and store it as a model version; it scores the gold
    cells (after commit), so every version is measured on them."""
    from mlworker.model import CheckpointError, load_checkpoint

    try:
        ckpt = load_checkpoint(checkpoint_path)
    except (CheckpointError, OSError, RuntimeError, pickle.UnpicklingError, EOFError) as exc:
        raise ApplicationError(f"{checkpoint_path} is not a usable checkpoint: {exc}") from None
    metrics = metrics if metrics is not None else dict(ckpt["metrics"])
    with transaction.atomic():
        version = ModelVersion(
            name=name or _next_name(),
            arch=ckpt["arch"],
            class_codes=list(ckpt["class_codes"]),
            image_size=ckpt["input_size"],
            temperature=float(ckpt["temperature"]),
            status=status,
            parent=parent,
            metrics=metrics,
            per_class_tpr=per_class_tpr(metrics),
            training_snapshot=training_snapshot or {},
            triggered_by=triggered_by,
            created_by=user,
        )
        with Path(checkpoint_path).open("rb") as fh:
            version.checkpoint.save(f"{version.name}.pt", File(fh), save=False)
        try:
            version.save()
        except IntegrityError:
            raise ApplicationError(f"A model version named {version.name!r} exists.") from None
        audit_event_create(
            actor=user,
            action="model.register",
            target_type="model_version",
            target_id=version.pk,
            after={"name": version.name, "arch": version.arch, "status": version.status},
        )
        gold_cells_enqueue_scoring(version_id=version.pk)
    return version


def model_version_checkpoint(version: ModelVersion) -> Checkpoint:
    """The version's checkpoint, read through storage (local files or S3 alike) and
    loaded with ``weights_only=True``."""
    import torch

    from mlworker.model import load_checkpoint

    with default_storage.open(str(version.checkpoint.name), "rb") as fh:
        data = fh.read()
    return load_checkpoint(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))


def _calibration_inputs(limit: int) -> list[Path | torch.Tensor]:
    """The oldest ``limit`` cells that are not failed, as scoring inputs (a local path, or
    the decoded image where the storage is remote). The oldest, so that a worker that
    restarts calibrates on the same cells and finds its int8 file in the cache."""
    import torch
    from torchvision.io import ImageReadMode, decode_image

    inputs: list[Path | torch.Tensor] = []
    names = (
        CellImage.objects.exclude(processing=CellImage.Processing.FAILED)
        .order_by("id")
        .values_list("image", flat=True)[:limit]
    )
    for name in names:
        path = storage_local_path(str(name))
        if path is not None:
            inputs.append(path)
            continue
        try:
            data = torch.frombuffer(bytearray(storage_read_bytes(str(name))), dtype=torch.uint8)
            inputs.append(decode_image(data, mode=ImageReadMode.RGB))
        except (OSError, RuntimeError):  # unreadable: left out of the calibration
            continue
    return inputs


def model_version_scorer(version: ModelVersion) -> Scorer:
    """A ``Scorer`` for the version with this worker's engine (``WBC_SCORING_ENGINE``).

    The ONNX engines export the checkpoint on first use in each worker into
    ``WBC_ONNX_CACHE_DIR`` (then reused; int8 calibrated on the oldest
    ``WBC_ONNX_CALIBRATION_CELLS`` cells, its agreement with fp32 judged on the next
    ``WBC_ONNX_CHECK_CELLS``). An export that fails leaves the scorer on
    torch (logged; ``scorer.engine`` says "torch"), so scoring never depends on it.
    """
    from mlworker.score import Scorer

    engine = settings.WBC_SCORING_ENGINE
    calibration = check = None
    if engine == "onnx-int8":
        # the oldest cells calibrate; the next ones, never calibrated on, judge agreement
        n = settings.WBC_ONNX_CALIBRATION_CELLS
        cells = _calibration_inputs(n + settings.WBC_ONNX_CHECK_CELLS)
        calibration, check = cells[:n], cells[n:] or None
    elif engine != "torch":
        calibration = _calibration_inputs(16)
    return Scorer(
        model_version_checkpoint(version),
        engine=engine,
        onnx_dir=settings.WBC_ONNX_CACHE_DIR,
        calibration=calibration,
        onnx_threads=settings.WBC_ONNX_THREADS or None,
        check=check,
    )


def _activate(
    version: ModelVersion, user: UserLike | None, action: str, extra: dict[str, Any]
) -> ModelVersion:
    from annotation.services.pipeline import cells_enqueue_scoring

    previous = ModelVersion.objects.select_for_update().active()
    if previous is not None:
        previous.status = ModelVersion.Status.RETIRED
        previous.save(update_fields=["status"])
    version.status = ModelVersion.Status.ACTIVE
    version.promoted_at = timezone.now()
    version.save(update_fields=["status", "promoted_at"])
    audit_event_create(
        actor=user,
        action=action,
        target_type="model_version",
        target_id=version.pk,
        before={"active": previous.name if previous else None},
        after={"active": version.name, **extra},
    )
    # Re-score what has no label yet (and the conflicts); scoring routes them again.
    review_queue_reset_for_new_version()
    pending = CellImage.objects.filter(current_label__isnull=True).values_list("id", flat=True)
    cells_enqueue_scoring(cell_ids=list(pending), version_id=version.pk)
    conflicts = CellImage.objects.filter(has_label_conflict=True).values_list("id", flat=True)
    cells_enqueue_scoring(cell_ids=list(conflicts), version_id=version.pk)
    transaction.on_commit(
        lambda: broadcast(
            JOBS_GROUP, "model.activated", {"version": version.name, "action": action}
        )
    )
    return version


def model_version_promote(
    *, version_id: int, user: UserLike | None, force: bool = False
) -> ModelVersion:
    with transaction.atomic():
        version = get_or_404(
            ModelVersion.objects.select_for_update(), what="Model version", pk=version_id
        )
        if version.status != ModelVersion.Status.CANDIDATE:
            raise ApplicationError(
                f"{version.name} is {version.status}; only a candidate can be promoted "
                "(use rollback to return to an earlier version).",
                code="not_a_candidate",
                status=409,
            )
        active = ModelVersion.objects.active()
        guard = guard_comparison(version, active)
        if not guard["passes"] and not force:
            # The classes too small to judge are said too: the admin deciding on force
            # should know the guard is silent about them, not that they are fine.
            unjudged = f" ({guard['cannot_judge']})" if guard.get("cannot_judge") else ""
            raise ApplicationError(
                f"{version.name} was not promoted: "
                + "; ".join(guard["reasons"])
                + unjudged
                + ". An admin may promote it anyway with force.",
                code="regression",
                status=409,
                fields={"guard": "; ".join(guard["reasons"])},
            )
        return _activate(
            version,
            user,
            "model.promote",
            {"forced": force and not guard["passes"], "guard": guard},
        )


def model_version_rollback(*, version_id: int, user: UserLike | None) -> ModelVersion:
    with transaction.atomic():
        version = get_or_404(
            ModelVersion.objects.select_for_update(), what="Model version", pk=version_id
        )
        if version.status != ModelVersion.Status.RETIRED or not version.checkpoint:
            raise ApplicationError(
                f"{version.name} is {version.status}; rollback returns to a retired version "
                "that was active before.",
                code="not_retired",
                status=409,
            )
        return _activate(version, user, "model.rollback", {})
