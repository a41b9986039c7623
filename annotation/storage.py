"""The one adapter between Django's file storage and the ML code, which reads files.

The ML package (mlworker) takes paths or bytes and never sees Django's storage; with the
default file-system storage a stored name has a local path, with a remote storage (S3 and
the like) it has none and the bytes are read, or copied out into a scratch folder.
"""

from __future__ import annotations

from pathlib import Path

from django.core.files.storage import default_storage


def storage_local_path(name: str) -> Path | None:
    """The file's path on this machine, or None where the storage is remote."""
    try:
        return Path(default_storage.path(name))
    except NotImplementedError:
        return None


def storage_read_bytes(name: str) -> bytes:
    """The stored file's content (raises OSError, e.g. FileNotFoundError, if missing)."""
    with default_storage.open(name, "rb") as fh:
        data = fh.read()
    return bytes(data)


def storage_path_for_training(*, name: str, scratch: Path) -> Path:
    """A local path the training code can open: the file itself, or a copy under
    ``scratch`` (a temporary folder the caller removes) where the storage is remote."""
    path = storage_local_path(name)
    if path is not None:
        return path
    target = scratch / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(storage_read_bytes(name))
    return target
