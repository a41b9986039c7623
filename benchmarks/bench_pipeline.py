"""1,000 pbc cells from import to every cell routed, with real worker processes.

For each arch (resnet18, resnet152; random weights: throughput only) the script makes a
scratch PostgreSQL database, registers and promotes a model, starts one `cpu` and one
`gpu` Celery worker on this machine, imports the cells as unlabelled, and times each
stage until every cell is segmented, scored and routed. Side by side it times the
baseline: the same work in one process, one cell at a time (segment, then score with
batch size 1), on the first 100 cells.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/13 \
        .venv/bin/python benchmarks/bench_pipeline.py [--cells 1000] [--archs resnet18,resnet152]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.processes import stop_processes  # noqa: E402


def prepare_database(name: str) -> str:
    import psycopg

    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    root = base.rsplit("/", 1)[0]
    with psycopg.connect(root + "/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    return f"{root}/{name}"


def worker(
    queue: str, env: dict[str, str], log: Path, loglevel: str = "WARNING"
) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "celery", "-A", "wbcportal", "worker", "-Q", queue,
           "--pool", "solo", "--without-gossip", "--without-mingle", "--loglevel", loglevel]  # fmt: skip
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "pbc")
    parser.add_argument("--cells", type=int, default=1000)
    parser.add_argument("--archs", default="resnet18,resnet152")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--baseline-cells", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()

    import redis

    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/13")
    src = Path(tempfile.mkdtemp(prefix="bench-pipe-src-")) / "smear"
    src.mkdir()
    files = sorted(args.data.rglob("*.jpg"))
    step = max(1, len(files) // args.cells)
    for path in files[::step][: args.cells]:
        shutil.copyfile(path, src / path.name)

    results: list[tuple[str, float, float]] = []
    for arch in args.archs.split(","):
        redis.Redis.from_url(redis_url).flushdb()
        media = Path(tempfile.mkdtemp(prefix="bench-pipe-media-"))
        env = dict(os.environ, DATABASE_URL=prepare_database("wbc_bench_pipeline"),
                   REDIS_URL=redis_url, MEDIA_ROOT=str(media), DJANGO_SETTINGS_MODULE="wbcportal.settings",
                   OMP_NUM_THREADS="1")  # fmt: skip
        code = f"""
import sys, time, json, django
sys.path.insert(0, {str(REPO)!r})
django.setup()
from pathlib import Path
from django.core.management import call_command
call_command("migrate", verbosity=0)
import torch
from mlworker.model import build_classifier, make_checkpoint, save_checkpoint
from annotation.services.model_registry import model_version_register, model_version_promote
from annotation.services.routing import routing_config_update
torch.manual_seed(0)
ckpt = save_checkpoint(make_checkpoint(build_classifier({arch!r}, 14, weights=None), arch={arch!r}, input_size={args.image_size}), Path({str(media)!r}) / "m.pt")
v = model_version_register(checkpoint_path=ckpt)
model_version_promote(version_id=v.pk, user=None)
routing_config_update(user=None, audit_rate=0.02)
"""
        subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=REPO)
        log = media / "workers.log"
        cpu_env = dict(env, OMP_NUM_THREADS="1")
        gpu_env = dict(env)
        gpu_env.pop("OMP_NUM_THREADS")
        workers = [worker("cpu", cpu_env, log), worker("gpu", gpu_env, log)]
        try:
            probe = f"""
import sys, time, json, django
sys.path.insert(0, {str(REPO)!r})
django.setup()
from pathlib import Path
from wbcportal.celery import ping
for queue in ("cpu", "gpu"):  # time the pipeline, not the workers' start
    ping.apply_async(args=["ready"], queue=queue).get(timeout=120)
from annotation.models import CellImage, Prediction, Segmentation, ReviewItem
from annotation.services.imports import cells_import
t0 = time.perf_counter()
s = cells_import(source={str(src)!r})
t_import = time.perf_counter() - t0
n = s.new_cells
seg_done = score_done = None
while time.perf_counter() - t0 < {args.timeout}:
    segs = Segmentation.objects.count(); preds = Prediction.objects.count()
    now = time.perf_counter() - t0
    if seg_done is None and segs >= n: seg_done = now
    if score_done is None and preds + CellImage.objects.filter(processing="failed").count() >= n: score_done = now
    if seg_done and score_done: break
    time.sleep(0.5)
items = ReviewItem.objects.count()
print(f"{arch:10s} cells {{n}}: import {{n/t_import:7.1f}} cells/s ({{t_import:.1f}} s) | "
      f"segmented all at {{seg_done:.1f}} s ({{n/seg_done:.1f}} cells/s) | "
      f"scored+routed all at {{score_done:.1f}} s ({{n/score_done:.1f}} cells/s) | review items {{items}}", flush=True)
Path({str(media)!r}, "probe.json").write_text(json.dumps({{"cells": n, "routed_s": score_done, "segmented_s": seg_done}}))
"""
            subprocess.run([sys.executable, "-c", probe], env=env, check=True, cwd=REPO)
        finally:
            stop_processes(workers, timeout=30)
        baseline = f"""
import sys, time
sys.path.insert(0, {str(REPO)!r})
from pathlib import Path
from PIL import Image
from mlworker.segmentation import segment_cell
from mlworker.score import Scorer
files = sorted(Path({str(src)!r}).glob("*.jpg"))[: {args.baseline_cells}]
scorer = Scorer(Path({str(media)!r}) / "m.pt")
t0 = time.perf_counter()
for f in files:
    with Image.open(f) as im:
        segment_cell(im)
    scorer.score([f], batch_size=1, num_workers=0)
dt = time.perf_counter() - t0
print(f"{arch:10s} baseline (one process, one cell at a time, {{len(files)}} cells): {{len(files)/dt:.1f}} cells/s", flush=True)
Path({str(media)!r}, "baseline.json").write_text('{{"cells_per_s": %f}}' % (len(files) / dt))
"""
        subprocess.run([sys.executable, "-c", baseline], env=dict(env), check=True, cwd=REPO)
        probe_result = json.loads((media / "probe.json").read_text())
        base_rate = json.loads((media / "baseline.json").read_text())["cells_per_s"]
        results.append((arch, probe_result["cells"] / probe_result["routed_s"], base_rate))
        shutil.rmtree(media, ignore_errors=True)
    shutil.rmtree(src.parent, ignore_errors=True)
    for arch, rate, base_rate in results:  # one line per arch for benchmarks/run_all.py
        result = {
            "name": "pipeline",
            "title": f"pipeline, import to routed ({arch}, {args.image_size} px)",
            "figure": round(rate, 1),
            "unit": "cells/s",
            "goal": None,
            "baseline": round(base_rate, 1),
            "ratio": round(rate / base_rate, 2),
            "command": "benchmarks/bench_pipeline.py " + " ".join(sys.argv[1:]),
            "note": f"{args.cells} cells, one cpu + one gpu worker on this machine; "
            "baseline: one process, one cell at a time",
        }
        print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
