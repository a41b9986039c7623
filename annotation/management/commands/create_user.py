from __future__ import annotations

import getpass
import os
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from annotation.errors import ApplicationError
from annotation.services.roles import ROLES
from annotation.services.users import user_create_with_role


class Command(BaseCommand):
    help = (
        "Create USER in ROLE (or move an existing user to ROLE). The password is read from "
        "the WBC_NEW_USER_PASSWORD environment variable, from stdin with --password-stdin, "
        "or asked for; it must pass Django's password validators. Never on the command "
        "line, where other users of the machine and the shell history would see it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("role", choices=ROLES)
        parser.add_argument(
            "--password-stdin", action="store_true", help="read the password from stdin"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        password = os.environ.get("WBC_NEW_USER_PASSWORD", "")
        if options["password_stdin"]:
            password = sys.stdin.readline().rstrip("\n")
        elif not password:
            password = getpass.getpass(f"Password for {options['username']}: ")
        if not password:
            raise CommandError(
                "No password given; set WBC_NEW_USER_PASSWORD or use --password-stdin."
            )
        try:
            user = user_create_with_role(
                username=options["username"], password=password, role=options["role"]
            )
        except ApplicationError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(f"{user.get_username()} is now {options['role']}")
