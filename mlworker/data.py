"""Reading labelled and unlabelled cell images from disk, tolerant of unreadable files.

Two labelled layouts are understood (the same ones ``import_cells`` accepts):
- a folder with ``manifest.csv`` (columns ``path,diff14[,source_label][,patient]``,
  paths relative to the folder);
- a class-per-folder tree whose folder names are 14-Diff codes (``NE/``, ``BL/``, ...).

A corrupt or unreadable image never stops a run: the dataset yields an error entry for it
and ``collate_cells`` keeps it out of the batch while reporting it alongside.
"""

from __future__ import annotations

import csv
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image

from mlworker import taxonomy

# torchvision 0.29 deprecates its image decoders in favour of TorchCodec, which is not in our
# lock yet; they remain the fastest CPU decoder here and the only nvJPEG one. Revisit when
# TorchCodec is added (requirements.in).
warnings.filterwarnings(
    "ignore",
    message="The image decoding and encoding capabilities of TorchVision",
    category=DeprecationWarning,
)

IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})
MANIFEST_NAME = "manifest.csv"
NO_LABEL = -1


@dataclass(frozen=True)
class Sample:
    """One image on disk and, when known, its 14-Diff code and provenance."""

    path: Path
    code: str | None = None
    source_label: str | None = None
    patient: str | None = None

    @property
    def label(self) -> int:
        return NO_LABEL if self.code is None else taxonomy.index_of(self.code)


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def list_images(root: str | Path) -> list[Path]:
    """All image files under ``root`` (recursively), in a stable order."""
    root = Path(root)
    if is_image_file(root):
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"no such image folder: {root}")
    return sorted(p for p in root.rglob("*") if is_image_file(p))


def read_manifest(root: Path) -> list[Sample]:
    manifest = root / MANIFEST_NAME
    with manifest.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"path", "diff14"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{manifest} lacks column(s) {', '.join(sorted(missing))}")
        samples = []
        for line, row in enumerate(reader, start=2):
            code = (row.get("diff14") or "").strip()
            try:
                taxonomy.by_code(code)
            except ValueError as exc:
                raise ValueError(f"{manifest}:{line}: {exc}") from None
            samples.append(
                Sample(
                    path=root / row["path"],
                    code=code,
                    source_label=(row.get("source_label") or None),
                    patient=(row.get("patient") or None),
                )
            )
    return samples


def read_class_folders(root: Path) -> list[Sample]:
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    unknown = [p.name for p in folders if p.name not in taxonomy.CODES]
    if unknown:
        raise ValueError(
            f"{root}: folder name(s) {', '.join(unknown)} are not 14-Diff codes "
            f"({', '.join(taxonomy.CODES)}); add a {MANIFEST_NAME} to map them"
        )
    if not folders:
        raise ValueError(f"{root}: neither {MANIFEST_NAME} nor class folders found")
    return [
        Sample(path=path, code=folder.name)
        for folder in folders
        for path in sorted(p for p in folder.rglob("*") if is_image_file(p))
    ]


def discover_samples(root: str | Path) -> list[Sample]:
    """Labelled samples from a manifest folder or a class-per-folder tree."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such data folder: {root}")
    if (root / MANIFEST_NAME).is_file():
        return read_manifest(root)
    return read_class_folders(root)


def read_bytes(path: Path) -> torch.Tensor:
    """File contents as a uint8 tensor (what the decoders take)."""
    data = path.read_bytes()
    if not data:
        raise ValueError("empty file")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def decode_file(path: Path) -> torch.Tensor:
    """Decode an image file to an RGB uint8 (3, H, W) tensor (libjpeg-turbo / libpng)."""
    return decode_image(read_bytes(path), mode=ImageReadMode.RGB)


_NATIVE_LOCATION = re.compile(r"^\w+, \S+\.cpp:\d+, ")


def describe_error(exc: BaseException) -> str:
    """A one-line reason for the person reading the report, without C++ file locations."""
    message = _NATIVE_LOCATION.sub("", str(exc).strip().splitlines()[0] if str(exc) else "")
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class CellImages(Dataset[dict[str, Any]]):
    """Images (paths or decoded tensors) through a preset; errors become entries.

    Each item is ``{"index", "label", "image" | "data" | None, "error"}``. With
    ``raw_bytes=True`` the file bytes are returned undecoded (``"data"``) so the caller
    can decode a whole batch on the GPU.
    """

    def __init__(
        self,
        items: Sequence[Sample | Path | str | torch.Tensor],
        transform: Callable[[torch.Tensor], torch.Tensor] | None,
        raw_bytes: bool = False,
    ) -> None:
        self.items = list(items)
        self.transform = transform
        self.raw_bytes = raw_bytes

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        label = item.label if isinstance(item, Sample) else NO_LABEL
        entry: dict[str, Any] = {"index": index, "label": label, "error": None}
        try:
            if isinstance(item, torch.Tensor):
                image = item
            else:
                path = item.path if isinstance(item, Sample) else Path(item)
                if self.raw_bytes:
                    entry["data"] = read_bytes(path)
                    return entry
                image = decode_file(path)
            entry["image"] = image if self.transform is None else self.transform(image)
        except Exception as exc:  # any decoding failure is reported for this image only
            entry["error"] = describe_error(exc)
        return entry


@dataclass
class CellBatch:
    """A batch of readable images plus the positions and errors of unreadable ones."""

    indices: list[int]
    labels: torch.Tensor
    images: torch.Tensor | None = None  # preprocessed (B, 3, S, S)
    data: list[torch.Tensor] | None = None  # undecoded file bytes, for device-side decoding
    errors: dict[int, str] | None = None

    def pin_memory(self) -> CellBatch:
        """Called by DataLoader(pin_memory=True) for faster host-to-GPU copies."""
        if self.images is not None:
            self.images = self.images.pin_memory()
        return self


def collate_cells(entries: list[dict[str, Any]]) -> CellBatch:
    errors = {e["index"]: e["error"] for e in entries if e["error"] is not None}
    good = [e for e in entries if e["error"] is None]
    batch = CellBatch(
        indices=[e["index"] for e in good],
        labels=torch.tensor([e["label"] for e in good], dtype=torch.long),
        errors=errors,
    )
    if good and "data" in good[0]:
        batch.data = [e["data"] for e in good]
    elif good:
        batch.images = torch.stack([e["image"] for e in good])
    return batch
