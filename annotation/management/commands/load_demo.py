from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from annotation.services.imports import cells_import
from annotation.services.roles import ROLES
from annotation.services.users import user_create_with_role

DEMO_DIR = Path(settings.BASE_DIR) / "demo" / "pbc"


class Command(BaseCommand):
    help = (
        "Import the bundled demo cells (PBC dataset, CC BY 4.0) and create one demo account "
        "per role. Safe to run again: nothing is imported twice, passwords are kept."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        summary = cells_import(source=DEMO_DIR, case_name="DEMO-PBC")
        self.stdout.write(f"demo cells: {summary.line()}")
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
