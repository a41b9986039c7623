"""Model registry: the promotion guard, forced promotion, rollback, re-scoring after."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from annotation.errors import ApplicationError
from annotation.models import AuditEvent, ModelVersion
from annotation.selectors.model_registry import model_version_compare
from annotation.services.model_registry import (
    model_version_promote,
    model_version_register,
    model_version_rollback,
)
from tests.annotation.pipeline.fixtures import tiny_checkpoint

pytestmark = pytest.mark.django_db


def _register(tmp_path: Path, name: str, **metrics) -> ModelVersion:
    return model_version_register(
        checkpoint_path=tiny_checkpoint(tmp_path / f"{name}.pt", **metrics), name=name
    )


def test_first_version_is_promoted_and_an_improving_candidate_replaces_it(tmp_path: Path) -> None:
    v1 = _register(tmp_path, "v1", balanced=0.80, tpr={"MY": 0.60})
    model_version_promote(version_id=v1.pk, user=None)
    v2 = _register(tmp_path, "v2", balanced=0.85, tpr={"MY": 0.70})
    model_version_promote(version_id=v2.pk, user=None)
    v1.refresh_from_db()
    assert ModelVersion.objects.active() == v2 and v1.status == "retired"
    assert AuditEvent.objects.filter(action="model.promote").count() == 2


def test_a_regressing_candidate_is_held_back_with_the_reason(tmp_path: Path) -> None:
    v1 = _register(tmp_path, "v1", balanced=0.85, tpr={"MY": 0.80})
    model_version_promote(version_id=v1.pk, user=None)
    worse_class = _register(tmp_path, "v2", balanced=0.90, tpr={"MY": 0.70})
    with pytest.raises(ApplicationError) as err:
        model_version_promote(version_id=worse_class.pk, user=None)
    assert err.value.status == 409 and "MY TPR drops from 0.80 to 0.70" in err.value.message
    worse_overall = _register(tmp_path, "v3", balanced=0.84, tpr={"MY": 0.80})
    with pytest.raises(ApplicationError, match="balanced accuracy drops"):
        model_version_promote(version_id=worse_overall.pk, user=None)
    assert ModelVersion.objects.active() == v1
    comparison = model_version_compare(a_id=v1.pk, b_id=worse_class.pk)
    assert comparison["per_class_tpr"]["MY"]["delta"] == pytest.approx(-0.10)
    assert comparison["guard_b_over_a"]["passes"] is False
    # An admin may overrule the guard; the audit trail says so.
    model_version_promote(version_id=worse_class.pk, user=None, force=True)
    assert ModelVersion.objects.active() == worse_class
    assert AuditEvent.objects.filter(action="model.promote").last().after["forced"] is True


def test_rollback_returns_to_a_retired_version_only(tmp_path: Path) -> None:
    v1 = _register(tmp_path, "v1")
    model_version_promote(version_id=v1.pk, user=None)
    v2 = _register(tmp_path, "v2", balanced=0.9)
    model_version_promote(version_id=v2.pk, user=None)
    with pytest.raises(ApplicationError, match="rollback returns to a retired version"):
        model_version_rollback(version_id=v2.pk, user=None)
    model_version_rollback(version_id=v1.pk, user=None)
    v2.refresh_from_db()
    assert ModelVersion.objects.active() == v1 and v2.status == "retired"


def test_a_broken_checkpoint_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ApplicationError, match="not a usable checkpoint"):
        model_version_register(checkpoint_path=bad)
    assert not ModelVersion.objects.exists()


def test_operator_commands(tmp_path: Path) -> None:
    out = io.StringIO()
    call_command(
        "register_model",
        str(tiny_checkpoint(tmp_path / "a.pt")),
        "--name",
        "base",
        "--activate",
        stdout=out,
    )
    assert "registered base (resnet18, active)" in out.getvalue()
    call_command(
        "register_model",
        str(tiny_checkpoint(tmp_path / "b.pt", balanced=0.5)),
        "--name",
        "worse",
        stdout=out,
    )
    with pytest.raises(CommandError, match="balanced accuracy drops"):
        call_command("promote", "worse", stdout=out)
    call_command("promote", "worse", "--force", stdout=out)
    call_command("rollback", "base", stdout=out)
    assert ModelVersion.objects.active().name == "base"
    with pytest.raises(CommandError, match="No model version 'nope'"):
        call_command("promote", "nope")
    call_command("queue_stats", "--json", stdout=out)
    assert '"queued": 0' in out.getvalue()


def test_promotion_resets_queued_items_but_keeps_leased_ones(tmp_path: Path) -> None:
    from annotation.models import Case, CellImage, ReviewItem
    from annotation.services.users import user_create_with_role

    v1 = _register(tmp_path, "v1")
    model_version_promote(version_id=v1.pk, user=None)
    case = Case.objects.create(accession_id="Q")
    cells = [
        CellImage.objects.create(
            case=case, image=f"c/{i}.jpg", sha256=f"{i:064d}", width=1, height=1
        )
        for i in range(2)
    ]
    heme = user_create_with_role(username="h", password="Long-pass-123", role="hematologist")
    queued = ReviewItem.objects.create(cell=cells[0], reasons=["low_confidence"], model_version=v1)
    leased = ReviewItem.objects.create(
        cell=cells[1], reasons=["low_confidence"], model_version=v1, status="leased", leased_to=heme
    )
    v2 = _register(tmp_path, "v2", balanced=0.9)
    model_version_promote(version_id=v2.pk, user=None)
    queued.refresh_from_db()
    leased.refresh_from_db()
    assert queued.status == "cancelled" and leased.status == "leased"


def test_the_guard_on_paired_figures_says_counts_p_and_what_it_cannot_judge(
    tmp_path: Path,
) -> None:
    v1 = _register(tmp_path, "v1", balanced=0.85)
    model_version_promote(version_id=v1.pk, user=None)

    def candidate(name: str, pr: dict[str, int]) -> ModelVersion:
        per_class = {
            "NE": {
                "n": 60,
                "active_hits": 50,
                "candidate_hits": 52,
                "active_only": 1,
                "candidate_only": 3,
            },
            "PR": {"n": 20, **pr},
            "AR": {
                "n": 2,
                "active_hits": 2,
                "candidate_hits": 0,
                "active_only": 2,
                "candidate_only": 0,
            },
        }
        overall = {k: sum(r[k] for r in per_class.values()) for k in per_class["NE"]}
        metrics = {
            "balanced_accuracy": 0.80,
            "per_class": {
                c: {"n": r["n"], "tpr": r["candidate_hits"] / r["n"]} for c, r in per_class.items()
            },
            "active_on_evaluation_set": {"balanced_accuracy": 0.85},
            "paired_on_evaluation_set": {
                **overall,
                "per_class": per_class,
                "active_version_id": v1.pk,
                "active_version": v1.name,
            },
        }
        ckpt = tiny_checkpoint(tmp_path / f"{name}.pt")
        return model_version_register(checkpoint_path=ckpt, name=name, metrics=metrics)

    worse = candidate(
        "v2", {"active_hits": 14, "candidate_hits": 9, "active_only": 5, "candidate_only": 0}
    )
    with pytest.raises(ApplicationError) as err:
        model_version_promote(version_id=worse.pk, user=None)
    assert "PR TPR 14/20 -> 9/20, p = 0.03" in err.value.message
    assert "cannot judge: AR (n=2)" in err.value.message
    comparison = model_version_compare(a_id=v1.pk, b_id=worse.pk)
    assert comparison["paired_b_over_a"]["per_class"]["PR"]["active_only"] == 5
    assert comparison["per_class_tpr"]["PR"]["n"] == 20
    assert comparison["per_class_tpr"]["BL"]["n"] == 0
    assert comparison["guard_b_over_a"]["unjudged"] == [{"code": "AR", "n": 2}]
    # Against another version than the one it was scored with, no paired counts are shown.
    assert model_version_compare(a_id=worse.pk, b_id=v1.pk)["paired_b_over_a"] is None

    # 2/2 -> 0/2 on AR and a PR drop that is noise: promoted, the guard's record says why.
    noise = candidate(
        "v3", {"active_hits": 14, "candidate_hits": 12, "active_only": 6, "candidate_only": 4}
    )
    model_version_promote(version_id=noise.pk, user=None)
    assert ModelVersion.objects.active() == noise
    guard = AuditEvent.objects.filter(action="model.promote").last().after["guard"]
    assert guard["basis"] == "paired" and guard["cannot_judge"] == "cannot judge: AR (n=2)"
