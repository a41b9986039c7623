"""``manage.py load_demo``: the demo cells, the shipped demo model as the active version
(judged on the demo's labelled cells), the smear scored and queued, one account per role."""

from __future__ import annotations

import io
import shutil

import pytest
from django.core.management import CommandError, call_command

from annotation.models import CellImage, EvaluationSet, ModelVersion, Prediction, ReviewItem
from annotation.services.roles import ROLES
from annotation.services.training.dataset import EVALUATION_SET

pytestmark = pytest.mark.django_db


def load_demo_eagerly(settings, *args: str) -> str:
    settings.CELERY_TASK_ALWAYS_EAGER = True  # the embedded default: tasks run in-process
    from wbcportal.celery import app

    app.conf.task_always_eager = True
    try:
        out = io.StringIO()
        call_command("load_demo", *args, stdout=out)
    finally:
        app.conf.task_always_eager = settings.CELERY_TASK_ALWAYS_EAGER = False
    return out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_load_demo_registers_the_demo_model_queues_the_smear_and_makes_accounts(
    client, settings
) -> None:
    text = load_demo_eagerly(settings)
    assert (
        CellImage.objects.filter(case__accession_id="DEMO-PBC", current_label__isnull=False).count()
        == 54
    )
    version = ModelVersion.objects.get()
    assert version.status == "active"
    assert version.arch == "efficientnet_lite0" and version.triggered_by == "demo"
    # Its figures are the held-out ones, and say so.
    assert version.metrics["note"].startswith(f"PBC test split, n={version.metrics['n']}")
    assert version.metrics["balanced_accuracy"] >= 0.85
    assert version.per_class_tpr["BA"] is not None
    assert "on PBC test split, n=" in text
    # Later versions are judged on the demo's 54 labelled cells, 6 per class.
    evaluation = EvaluationSet.objects.get(name=EVALUATION_SET)
    assert len(evaluation.cell_ids) == 54 and set(evaluation.counts.values()) == {6}
    smear = CellImage.objects.filter(case__accession_id="DEMO-SMEAR")
    assert smear.count() == 54 and not smear.filter(current_label__isnull=False).exists()
    scored = Prediction.objects.filter(cell__in=smear, model_version=version)
    assert scored.count() == 54
    # Not "BA, 17 %" for every cell: the demo model tells the smear's classes apart.
    assert scored.values("top_code").distinct().count() >= 7
    assert ReviewItem.objects.filter(status="queued").count() >= 1  # something to label at once
    credentials = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith("demo_"):
            credentials[parts[0]] = parts[1]
    assert set(credentials) == {f"demo_{r}" for r in ROLES}
    assert client.login(username="demo_hematologist", password=credentials["demo_hematologist"])
    # Running it again imports and registers nothing and keeps the passwords.
    out2 = io.StringIO()
    call_command("load_demo", stdout=out2)
    assert "imported 0 cells" in out2.getvalue() and ModelVersion.objects.count() == 1
    assert credentials["demo_admin"] in out2.getvalue()


def test_load_demo_refuses_a_corrupted_demo_model_and_registers_nothing(settings, tmp_path) -> None:
    from mlworker.demo_model import DEFAULT_DEMO_MODEL_DIR, DELTA_NAME

    broken = tmp_path / "model"
    shutil.copytree(DEFAULT_DEMO_MODEL_DIR, broken)
    (broken / DELTA_NAME).write_bytes((broken / DELTA_NAME).read_bytes()[:-100])
    with pytest.raises(CommandError, match=r"demo model cannot be loaded: .*SHA-256"):
        load_demo_eagerly(settings, "--model-dir", str(broken))
    assert not ModelVersion.objects.exists()
