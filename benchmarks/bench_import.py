"""Import all of ../shared/data/pbc into PostgreSQL; cells/s, ours next to a naive loop.

The baseline is the obvious implementation: one file at a time, decode, hash, store,
then one INSERT per cell, label and audit event, each in its own transaction.
Both runs start from an empty database and empty media folder.

    .venv/bin/python benchmarks/bench_import.py [--data DIR] [--limit N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def setup_django(db_name: str, media: Path) -> None:
    import psycopg

    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    admin_url = base.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {db_name}")
        conn.execute(f"CREATE DATABASE {db_name}")
    os.environ["DATABASE_URL"] = base.rsplit("/", 1)[0] + "/" + db_name
    os.environ["MEDIA_ROOT"] = str(media)
    os.environ.pop("REDIS_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wbcportal.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def reset(media: Path) -> None:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(
            "TRUNCATE annotation_auditevent, annotation_label, annotation_cellimage, "
            "annotation_case, annotation_importbatch RESTART IDENTITY CASCADE"
        )
    shutil.rmtree(media, ignore_errors=True)


def naive_import(root: Path) -> int:
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage
    from PIL import Image

    from annotation.models import AuditEvent, Case, CellImage, Label
    from mlworker.taxonomy import resolve_source_name

    case = Case.objects.create(accession_id=root.name)
    n = 0
    for path in sorted(root.rglob("*.jpg")):
        data = path.read_bytes()
        with Image.open(path) as im:
            im.load()
            width, height = im.size
        sha = hashlib.sha256(data).hexdigest()
        if CellImage.objects.filter(sha256=sha).exists():
            continue
        name = default_storage.save(f"cells/{sha}.jpg", ContentFile(data))
        cell = CellImage.objects.create(
            case=case, image=name, sha256=sha, width=width, height=height,
            original_filename=path.name, source_class_name=path.parent.name,
        )  # fmt: skip
        code = resolve_source_name(path.parent.name).code
        if code:
            label = Label.objects.create(cell=cell, code=code, source="imported")
            cell.current_label = label
            cell.save(update_fields=["current_label"])
            AuditEvent.objects.create(
                action="label.create", target_type="cell", target_id=str(cell.pk)
            )
        n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "pbc")
    parser.add_argument("--db", default="wbc_bench_import", help="scratch database (dropped)")
    args = parser.parse_args()
    media = Path(tempfile.mkdtemp(prefix="bench-import-media-"))
    setup_django(args.db, media)
    from annotation.models import CellImage
    from annotation.services.imports import cells_import

    # The source is copied without its manifest so both paths read the same folder tree.
    src = Path(tempfile.mkdtemp(prefix="bench-import-src-")) / "pbc"
    shutil.copytree(args.data, src, ignore=shutil.ignore_patterns("manifest.csv"))

    results = {}
    for name, run in (
        ("baseline (naive loop)", lambda: naive_import(src)),
        # Storing and recording only: segmentation and scoring are measured by
        # bench_pipeline.py (without Redis they would run inline here).
        (
            "ours (cells_import)",
            lambda: cells_import(source=src, enqueue_processing=False).new_cells,
        ),
    ):
        reset(media)
        start = time.perf_counter()
        n = run()
        elapsed = time.perf_counter() - start
        assert CellImage.objects.count() == n
        results[name] = (n, elapsed)
        print(f"{name:24s} {n} cells in {elapsed:6.2f} s = {n / elapsed:7.1f} cells/s", flush=True)
    base_rate = results["baseline (naive loop)"][0] / results["baseline (naive loop)"][1]
    ours_rate = results["ours (cells_import)"][0] / results["ours (cells_import)"][1]
    print(f"ours / baseline: {ours_rate / base_rate:.2f}x   goal: >= 100 cells/s (ours)")
    result = {
        "name": "import",
        "figure": round(ours_rate, 1),
        "unit": "cells/s",
        "goal": "≥ 100 cells/s",
        "met": ours_rate >= 100,
        "baseline": round(base_rate, 1),
        "ratio": round(ours_rate / base_rate, 2),
        "command": "benchmarks/bench_import.py " + " ".join(sys.argv[1:]),
        "note": f"{results['ours (cells_import)'][0]} pbc cells into PostgreSQL; "
        "baseline: one file at a time, one INSERT per row",
    }
    print("RESULT " + json.dumps(result), flush=True)
    shutil.rmtree(media, ignore_errors=True)
    shutil.rmtree(src.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
