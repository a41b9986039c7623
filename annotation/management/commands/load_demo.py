from __future__ import annotations

import secrets
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from annotation.models import CellImage, EvaluationSet, ModelVersion
from annotation.services.imports import cells_import
from annotation.services.model_registry import model_version_promote, model_version_register
from annotation.services.roles import ROLES
from annotation.services.training.dataset import EVALUATION_SET
from annotation.services.users import user_create_with_role

DEMO_DIR = Path(settings.BASE_DIR) / "demo"
DEMO_MODEL_DIR = DEMO_DIR / "model"
LABELLED_CASE = "DEMO-PBC"
# With fewer cells a class, one cell moves that class's TPR by 20 points or more, and
# the promotion guard would compare noise.
MIN_EVALUATION_CELLS_PER_CLASS = 6


class Command(BaseCommand):
    help = (
        "Load the demo (PBC dataset, CC BY 4.0): labelled cells (demo/pbc), an unlabelled "
        "smear to review (demo/smear), the demo model (demo/model: EfficientNet-Lite0, its "
        "last stage and head trained on other PBC cells) as the active version, and one "
        "account per role. Offline and quick. Safe to run again: nothing is imported or "
        "registered twice, passwords are kept."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--no-train",
            "--no-model",
            dest="no_model",
            action="store_true",
            help="do not register the demo model (the smear then waits for a first model)",
        )
        parser.add_argument(
            "--model-dir",
            type=Path,
            default=DEMO_MODEL_DIR,
            help="the demo model's files (delta.pt, model.json)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        labelled = cells_import(source=DEMO_DIR / "pbc", case_name=LABELLED_CASE)
        self.stdout.write(f"demo labelled cells: {labelled.line()}")
        if not options["no_model"] and not ModelVersion.objects.exists():
            self._register_model(options["model_dir"])
        # Imported after the model is active, so its cells are scored and queued at once
        # (with a worker, the pipeline does this in the background anyway).
        smear = cells_import(source=DEMO_DIR / "smear", case_name="DEMO-SMEAR")
        self.stdout.write(f"demo smear to review: {smear.line()}")
        self._accounts()

    def _register_model(self, model_dir: Path) -> None:
        """The shipped demo model as the active version, judged on the demo's labelled
        cells; a model trained on 54 cells from random weights was right for 1 in 6."""
        from mlworker.demo_model import DemoModelError, load_demo_checkpoint

        try:
            checkpoint = load_demo_checkpoint(model_dir)
        except DemoModelError as exc:
            raise CommandError(f"the demo model cannot be loaded: {exc}") from None
        from mlworker.model import save_checkpoint

        metrics = dict(checkpoint["metrics"])
        # One transaction: a failed promotion leaves no candidate behind that would stop
        # the next run from registering it again.
        with tempfile.TemporaryDirectory(prefix="wbc-demo-") as tmp, transaction.atomic():
            evaluation = self._evaluation_set()
            path = save_checkpoint(checkpoint, Path(tmp) / "demo.pt")
            version = model_version_register(
                checkpoint_path=path,
                metrics=metrics,
                training_snapshot={
                    "source": "demo/model (scripts/make_demo_model.py)",
                    "train_counts": metrics.get("data", {}).get("train_per_class", {}),
                    "n_train": metrics.get("data", {}).get("train"),
                    "evaluation_set": evaluation.name,
                    "evaluation_counts": evaluation.counts,
                    "n_evaluation": len(evaluation.cell_ids),
                },
                triggered_by="demo",
            )
            version = model_version_promote(version_id=version.pk, user=None)
        low, high = metrics.get("balanced_accuracy_ci95") or (None, None)
        self.stdout.write(
            f"demo model {version.name} ({version.arch}) is {version.status}: balanced "
            f"accuracy {_percent(metrics.get('balanced_accuracy'))} (95 % CI "
            f"{_percent(low)}-{_percent(high)}) on {metrics.get('note', 'its test split')}"
        )
        self.stdout.write(
            f"fixed evaluation set {evaluation.name!r}: {len(evaluation.cell_ids)} demo cells "
            + ", ".join(f"{c} {n}" for c, n in sorted(evaluation.counts.items()))
        )

    def _evaluation_set(self) -> EvaluationSet:
        """Every later version is compared with the demo model on the demo's labelled
        cells (6 per class); the default 30 % of them would be 1 or 2 a class."""
        existing = EvaluationSet.objects.filter(name=EVALUATION_SET).first()
        if existing is not None:
            return existing
        cells = CellImage.objects.filter(
            case__accession_id=LABELLED_CASE, current_label__isnull=False
        ).values_list("id", "current_label__code")
        counts = Counter(code for _, code in cells)
        if not counts or min(counts.values()) < MIN_EVALUATION_CELLS_PER_CLASS:
            raise CommandError(f"the demo's labelled cells give too few per class: {dict(counts)}")
        return EvaluationSet.objects.create(
            name=EVALUATION_SET, cell_ids=sorted(i for i, _ in cells), counts=dict(counts)
        )

    def _accounts(self) -> None:
        credentials_file = Path(settings.DATA_DIR) / "demo-credentials.txt"
        known: dict[str, str] = {}
        if credentials_file.exists():
            for line in credentials_file.read_text().splitlines():
                user, _, password = line.partition(" ")
                known[user] = password
        user_model = get_user_model()
        for role in ROLES:
            username = f"demo_{role}"
            password = known.get(username) or secrets.token_urlsafe(9)
            if not user_model.objects.filter(username=username).exists():
                known[username] = password
            user_create_with_role(username=username, password=password, role=role)
        credentials_file.parent.mkdir(parents=True, exist_ok=True)
        credentials_file.write_text("".join(f"{u} {p}\n" for u, p in sorted(known.items())))
        credentials_file.chmod(0o600)
        self.stdout.write("demo accounts (user password role), kept in " + str(credentials_file))
        for role in ROLES:
            username = f"demo_{role}"
            password = known.get(username, "(set earlier, not stored)")
            self.stdout.write(f"  {username} {password} {role}")


def _percent(value: float | None) -> str:
    return "?" if value is None else f"{100 * value:.1f} %"
