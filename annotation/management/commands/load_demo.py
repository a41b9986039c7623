from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser

from annotation.models import ModelVersion, TrainingJob
from annotation.services.imports import cells_import
from annotation.services.roles import ROLES
from annotation.services.training import training_job_create
from annotation.services.users import user_create_with_role

DEMO_DIR = Path(settings.BASE_DIR) / "demo"
# A first model small enough to train in about a minute on a laptop CPU.
DEMO_TRAINING_ARGS = [
    "--arch", "resnet18", "--image-size", "64", "--weights", "none",
    "--epochs-head", "2", "--epochs-finetune", "6", "--finetune-scope", "all",
    "--lr-step", "4", "--batch-size", "16", "--weak-threshold", "0",
]  # fmt: skip


class Command(BaseCommand):
    help = (
        "Load the demo (PBC dataset, CC BY 4.0): labelled cells (demo/pbc), an unlabelled "
        "smear to review (demo/smear), a first small model trained on the labelled cells, "
        "and one account per role. Safe to run again: nothing is imported or trained twice, "
        "passwords are kept."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--no-train", action="store_true", help="skip training the first demo model"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        labelled = cells_import(source=DEMO_DIR / "pbc", case_name="DEMO-PBC")
        self.stdout.write(f"demo labelled cells: {labelled.line()}")
        if not options["no_train"] and not ModelVersion.objects.exists():
            self.stdout.write("training a first small model on the labelled demo cells ...")
            job = training_job_create(
                trigger=TrainingJob.Trigger.ADMIN, user=None, params={"args": DEMO_TRAINING_ARGS}
            )
            job.refresh_from_db()
            version = job.result_version
            if version is not None:
                self.stdout.write(f"training job {job.pk}: {version.name} is {version.status}")
            elif job.status in (TrainingJob.Status.QUEUED, TrainingJob.Status.RUNNING):
                self.stdout.write(f"training job {job.pk} {job.status}: a worker trains it")
            else:
                self.stdout.write(f"training job {job.pk} {job.status}: {job.error}")
        # Imported after the model exists, so its cells are scored and queued at once
        # (with a worker, the pipeline does this in the background anyway).
        smear = cells_import(source=DEMO_DIR / "smear", case_name="DEMO-SMEAR")
        self.stdout.write(f"demo smear to review: {smear.line()}")
        self._accounts()

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
