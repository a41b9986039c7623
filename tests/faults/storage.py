"""The edge of the world for the disk-full tests: local file storage on a disk that fills
up. The first ``FullDiskStorage.saves_left`` files are written whole; the next one is
written half-way and then fails with ENOSPC, as a real full disk does."""

from __future__ import annotations

import errno
import os
from typing import Any

from django.core.files.storage import FileSystemStorage


class FullDiskStorage(FileSystemStorage):
    saves_left = 0

    def _save(self, name: str, content: Any) -> str:
        if FullDiskStorage.saves_left > 0:
            FullDiskStorage.saves_left -= 1
            return super()._save(name, content)
        path = self.path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        content.seek(0)
        data = content.read()
        with open(path, "wb") as fh:
            fh.write(data[: max(1, len(data) // 2)])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


def use_full_disk(settings: Any, *, saves_left: int) -> None:
    FullDiskStorage.saves_left = saves_left
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {"BACKEND": "tests.faults.storage.FullDiskStorage"},
    }


def use_normal_disk(settings: Any) -> None:
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    }
