"""Print shell exports that point the tests at PostgreSQL and Redis.

Explicit DATABASE_URL / REDIS_URL win. Otherwise the local services on their standard
ports are used when they answer. With CI=true a service that does not answer is an
error (exit 1), never a silent fallback.
"""

from __future__ import annotations

import os
import shlex
import socket
import sys

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/wbcportal"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def main() -> int:
    ci = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
    exports: dict[str, str] = {}
    missing: list[str] = []
    for var, default, port in (
        ("DATABASE_URL", DEFAULT_DATABASE_URL, 5432),
        ("REDIS_URL", DEFAULT_REDIS_URL, 6379),
    ):
        if os.environ.get(var):
            continue
        if answers("127.0.0.1", port):
            exports[var] = default
        else:
            missing.append(f"{var} is unset and nothing answers on 127.0.0.1:{port}")
    if missing and ci:
        for line in missing:
            print(f"service_env: {line}; CI needs it", file=sys.stderr)
        return 1
    for line in missing:
        print(f"service_env: {line}; tests that need it will be skipped", file=sys.stderr)
    for var, value in exports.items():
        print(f"export {var}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
