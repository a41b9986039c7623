from __future__ import annotations

import io
import shutil
from pathlib import Path

from django.core.management import call_command
from PIL import Image


def copy_files(sources: list[Path], dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for src in sources:
        target = dest / src.name
        shutil.copyfile(src, target)
        out.append(target)
    return out


def first_images(folder: Path, n: int) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".png"})[:n]


def jpeg_bytes(
    size: tuple[int, int] = (120, 120), color: tuple[int, int, int] = (200, 50, 90)
) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def run_import(*args: str) -> list[str]:
    out = io.StringIO()
    call_command("import_cells", *args, "--no-progress", stdout=out)
    return out.getvalue().strip().splitlines()
