# ruff: noqa: E402  (imports follow the sys.path line that makes the project importable)
"""The learning loop, through the product: does a new site's labelling make the model good
at that site's patients, round by round?

    .venv/bin/python benchmarks/bench_loop.py                 # documented small setting
    .venv/bin/python benchmarks/bench_loop.py --rounds 5 --batch 100 --orders default,random \\
        --site-b ../shared/data/deepapl --test-fraction 0.25 --out runs/bench/loop

Site A is where the starting model learnt (``--start demo``: the bundled demo model,
EfficientNet-Lite0 trained on PBC cells only; or ``--start PATH`` for any checkpoint, e.g.
one ``python -m mlworker.train --data <site A>`` wrote). Site B (``--site-b``: any class-folder
or manifest tree; deepapl by default) is split by patient (``mlworker.train.splits``, the
product's one splitter): the test patients (``--test-fraction``, or a separate tree with
``--test``) are never imported, never labelled and never used for any decision; the rest is
the pool, imported as unlabelled cases (one per patient, CellaVision's "Unsigned slides"
layout) through the normal import (``cells_import``).

Each line runs in its own scratch PostgreSQL database with a real Redis and real Celery
worker processes (one ``cpu`` worker: segmentation; one ``gpu`` worker: scoring and
training), as production runs:
1. the start is registered and promoted; the pool is imported, segmented, scored and routed;
2. each round, a simulated hematologist takes ``next`` from the review queue
   (``POST /api/queue/next/``) and submits the true class from the manifest
   (``POST /api/queue/items/{id}/submit/``) for ``--batch`` cells;
3. the product's own retraining runs: ``training_job_create`` (what the admin's button
   calls) and the ``train_model`` Celery task, with the product's defaults
   (``WBC_RETRAIN_ARGS`` unset); the promotion guard decides; a promoted version rescores
   the unlabelled pool, which re-routes and re-orders the queue;
4. the active version is evaluated on the test patients (balanced accuracy, abnormal-group
   TPR, per-class TPR with n; ``mlworker.metrics``).

Lines: ``default`` (the product's queue order), ``random`` (the queue in random order: the
``random`` routing strategy), and ``ceiling``: every pool cell imported with its label and
one retrain (all labels at once). Output: ``loop.json`` and ``loop.png`` (learning curves)
in ``--out``, one ``RESULT`` line for ``benchmarks/run_all.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_pipeline import prepare_database, worker
from tests.processes import stop_processes

DEFAULT_SITE_B = REPO.parent / "shared" / "data" / "deepapl"


# --- the driver (no Django) ---------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _split(args: argparse.Namespace) -> tuple[list[Any], list[Any]]:
    """(pool, test) samples of site B: the product's splitter, by patient."""
    from mlworker.data import discover_samples
    from mlworker.train.splits import deduplicate, split_train_val

    samples = [s for s in discover_samples(args.site_b) if s.code]
    samples = list(deduplicate(samples).kept)
    if args.test is not None:
        test = [s for s in discover_samples(args.test) if s.code]
        return samples, test
    pool, test = split_train_val(samples, args.test_fraction, args.split_seed)
    return pool, test


def _pool_tree(pool: list[Any], root: Path, labelled: bool) -> Path:
    """The pool as an import source: one case per patient, unlabelled ("Unsigned slides")
    or, for the ceiling, under its class (a manifest)."""
    root.mkdir(parents=True, exist_ok=True)
    rows = ["path,diff14,patient"]
    for i, s in enumerate(pool):
        patient = s.patient or "unknown"
        if labelled:
            dest = root / patient / f"{i:05d}{s.path.suffix}"
            rows.append(f"{dest.relative_to(root)},{s.code},{patient}")
        else:
            dest = root / f"Patient_{patient}" / "Unsigned slides" / f"{i:05d}{s.path.suffix}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(s.path, dest)
    if labelled:
        (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def run_line(args: argparse.Namespace, line: str, pool: list[Any], test: list[Any]) -> dict:
    """One line in its own database, media folder, Redis db and workers."""
    import redis

    scratch = Path(tempfile.mkdtemp(prefix=f"bench-loop-{line}-"))
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/9")
    redis.Redis.from_url(redis_url).flushdb()
    env = dict(os.environ, DATABASE_URL=prepare_database(f"wbc_bench_loop_{line}"),
               REDIS_URL=redis_url, MEDIA_ROOT=str(scratch / "media"),
               WBC_DATA_DIR=str(scratch / "data"), DJANGO_SETTINGS_MODULE="wbcportal.settings")  # fmt: skip
    env.pop("WBC_RETRAIN_ARGS", None)  # the product's defaults
    source = _pool_tree(pool, scratch / "pool", labelled=line == "ceiling")
    truth = {}
    for s, copied in zip(pool, _copied(source, pool), strict=True):
        truth[_sha256(copied)] = s.code
    spec = {
        "line": line,
        "source": str(source),
        "truth": truth,
        "test": [[str(s.path), s.code] for s in test],
        "rounds": 1 if line == "ceiling" else args.rounds,
        "batch": args.batch,
        "start": args.start,
        "strategy": "random" if line == "random" else "default",
        "timeout": args.timeout,
    }
    (scratch / "spec.json").write_text(json.dumps(spec))
    log = scratch / "workers.log"
    workers = [
        worker("cpu", dict(env, OMP_NUM_THREADS="1"), log, "INFO"),
        worker("gpu", env, log, "INFO"),
    ]
    try:
        subprocess.run(
            [sys.executable, __file__, "--drive", str(scratch / "spec.json")],
            env=env,
            cwd=REPO,
            check=True,
        )
    finally:
        stop_processes(workers, timeout=60)
    result = json.loads((scratch / "result.json").read_text())
    if not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)
    return result


def _copied(source: Path, pool: list[Any]) -> list[Path]:
    files = {p.stem: p for p in source.rglob("*") if p.is_file() and p.suffix != ".csv"}
    return [files[f"{i:05d}"] for i in range(len(pool))]


def _plot(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, title in (
        (axes[0], "balanced_accuracy", "balanced accuracy"),
        (axes[1], "abnormal_tpr", "abnormal-group TPR"),
    ):
        for line, data in results["lines"].items():
            rounds = data["rounds"]
            xs = [r["labels"] for r in rounds]
            ys = [r["test"][key] for r in rounds]
            if line == "ceiling":
                ax.axhline(ys[-1], linestyle="--", color="grey", label=f"ceiling ({xs[-1]} labels)")
            else:
                ax.plot(xs, ys, marker="o", label=line)
        ax.set_xlabel("site-B labels")
        ax.set_ylabel(f"{title}, site-B test patients")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"learning loop through the product (test n = {results['n_test']})")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--drive", help=argparse.SUPPRESS)
    parser.add_argument("--site-b", "--pool", dest="site_b", type=Path, default=DEFAULT_SITE_B)
    parser.add_argument("--test", type=Path, default=None, help="a separate test tree")
    parser.add_argument("--test-fraction", type=float, default=0.25)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument(
        "--max-pool",
        type=int,
        default=1000,
        help="thin the pool to this many cells (every k-th); 0: all",
    )
    parser.add_argument("--start", default="demo", help="'demo' or a checkpoint path")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--orders", default="default,random,ceiling")
    parser.add_argument("--timeout", type=float, default=1800, help="per wait, seconds")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "loop")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folders")
    args = parser.parse_args()
    if args.drive:
        drive(Path(args.drive))
        return
    started = time.monotonic()
    pool, test = _split(args)
    if args.max_pool and len(pool) > args.max_pool:
        step = len(pool) / args.max_pool
        pool = [pool[int(i * step)] for i in range(args.max_pool)]
    print(f"site B: {len(pool)} pool cells, {len(test)} test cells", flush=True)
    results: dict[str, Any] = {
        "command": "benchmarks/bench_loop.py " + " ".join(sys.argv[1:]),
        "n_pool": len(pool),
        "n_test": len(test),
        "start": args.start,
        "lines": {},
    }
    for line in args.orders.split(","):
        results["lines"][line] = run_line(args, line, pool, test)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "loop.json").write_text(json.dumps(results, indent=1))
    results["minutes"] = round((time.monotonic() - started) / 60, 1)
    (args.out / "loop.json").write_text(json.dumps(results, indent=1))
    _plot(results, args.out / "loop.png")
    _summary(results)


def _summary(results: dict[str, Any]) -> None:
    lines = results["lines"]
    for line, data in lines.items():
        for r in data["rounds"]:
            t = r["test"]
            print(
                f"{line:8s} round {r['round']}: {r['labels']:5d} labels  balanced "
                f"{t['balanced_accuracy']:.3f}  abnormal {t['abnormal_tpr']:.3f}  "
                f"version {r['active']}  {r.get('minutes', 0):.1f} min  {r.get('note', '')}",
                flush=True,
            )
    default = lines.get("default", {}).get("rounds", [])
    if default:
        first, last = default[0]["test"], default[-1]["test"]
        result = {
            "name": "loop",
            "title": f"learning loop, site-B test balanced accuracy after {default[-1]['labels']} labels",
            "figure": round(100 * last["balanced_accuracy"], 1),
            "unit": "%",
            "goal": ">= 65 and +20 over the start",
            "baseline": round(100 * first["balanced_accuracy"], 1),
            "ratio": None,
            "command": results["command"],
            "note": f"start {results['start']}; test n = {results['n_test']}; "
            f"{results.get('minutes', '?')} min in all",
        }
        print("RESULT " + json.dumps(result), flush=True)


# --- the simulated lab (inside Django, against the running workers) -------------------------


def drive(spec_path: Path) -> None:
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    spec = json.loads(spec_path.read_text())
    out = spec_path.parent / "result.json"
    lab = _Lab(spec)
    rounds = [lab.start()]
    for number in range(1, spec["rounds"] + 1):
        rounds.append(lab.round(number))
        out.write_text(json.dumps({"rounds": rounds}))
    out.write_text(json.dumps({"rounds": rounds, "strategy": spec["strategy"]}))


class _Lab:
    def __init__(self, spec: dict[str, Any]) -> None:
        from django.contrib.auth import get_user_model
        from django.test import Client

        from mlworker.data import Sample

        self.spec = spec
        self.truth: dict[str, str] = spec["truth"]
        self.test = [Sample(path=Path(p), code=c) for p, c in spec["test"]]
        users = get_user_model()
        self.hematologist = users.objects.create_user("bench-hematologist", password="x")
        self.admin = users.objects.create_superuser("bench-admin", password="x")
        self._grant()
        self.client = Client()
        self.client.force_login(self.hematologist)
        self.labels = 0

    def _grant(self) -> None:
        from django.contrib.auth.models import Group

        from annotation.roles import HEMATOLOGIST

        Group.objects.get(name=HEMATOLOGIST).user_set.add(self.hematologist)

    def _wait(self, what: str, done: Any) -> float:
        t0 = time.monotonic()
        while not done():
            if time.monotonic() - t0 > self.spec["timeout"]:
                raise TimeoutError(f"waited {self.spec['timeout']} s for {what}")
            time.sleep(1)
        return time.monotonic() - t0

    def _scored(self) -> bool:
        from annotation.models import CellImage, ModelVersion, Prediction

        active = ModelVersion.objects.active()
        unlabelled = CellImage.objects.filter(current_label__isnull=True).exclude(
            processing=CellImage.Processing.FAILED
        )
        pending = unlabelled.exclude(
            id__in=Prediction.objects.filter(model_version=active).values("cell_id")
        )
        return not CellImage.objects.filter(processing="pending").exists() and not pending.exists()

    def _evaluate(self) -> tuple[dict[str, Any], str]:
        from annotation.models import ModelVersion
        from annotation.services.model_registry import model_version_checkpoint
        from mlworker.train.loop import evaluate_samples

        active = ModelVersion.objects.active()
        assert active is not None
        report = evaluate_samples(model_version_checkpoint(active), self.test)
        per_class = {
            code: {"tpr": row.get("tpr"), "n": row.get("n", row.get("support"))}
            for code, row in (report.get("per_class") or {}).items()
        }
        return {
            "balanced_accuracy": report["balanced_accuracy"],
            "abnormal_tpr": report.get("abnormal_tpr"),
            "normal_tpr": report.get("normal_tpr"),
            "balanced_accuracy_ci95": report.get("balanced_accuracy_ci95"),
            "per_class": per_class,
        }, active.name

    def start(self) -> dict[str, Any]:
        from annotation.services.imports import cells_import
        from annotation.services.model_registry import (
            model_version_promote,
            model_version_register,
        )
        from annotation.services.routing import routing_config_update
        from mlworker.model import save_checkpoint
        from wbcportal.celery import ping

        for queue in ("cpu", "gpu"):
            ping.apply_async(args=["ready"], queue=queue).get(timeout=300)
        t0 = time.monotonic()
        if self.spec["start"] == "demo":
            from mlworker.demo_model import load_demo_checkpoint

            path = save_checkpoint(load_demo_checkpoint(), Path(tempfile.mkdtemp()) / "start.pt")
        else:
            path = Path(self.spec["start"])
        version = model_version_register(checkpoint_path=path, triggered_by="bench_loop")
        model_version_promote(version_id=version.pk, user=None, force=True)
        routing_config_update(user=None, strategy=self.spec["strategy"])
        summary = cells_import(source=Path(self.spec["source"]))
        waited = self._wait("the pool to be segmented, scored and routed", self._scored)
        test, name = self._evaluate()
        print(
            f"[{self.spec['line']}] start {name}: {summary.new_cells} cells imported, routed "
            f"in {waited:.0f} s; test balanced {test['balanced_accuracy']:.3f}",
            flush=True,
        )
        return {
            "round": 0,
            "labels": self.labels,
            "active": name,
            "test": test,
            "minutes": round((time.monotonic() - t0) / 60, 2),
            "note": f"{summary.new_cells} cells imported",
        }

    def _label(self, count: int) -> int:
        from annotation.models import CellImage

        done = 0
        while done < count:
            reply = self.client.post("/api/queue/next/", {}, content_type="application/json")
            if reply.status_code == 204:
                break
            assert reply.status_code == 200, reply.content
            item = reply.json()
            sha = CellImage.objects.values_list("sha256", flat=True).get(pk=item["cell"]["id"])
            answer = self.client.post(
                f"/api/queue/items/{item['id']}/submit/",
                {"code": self.truth[sha]},
                content_type="application/json",
            )
            assert answer.status_code == 201, answer.content
            done += 1
        self.labels += done
        return done

    def round(self, number: int) -> dict[str, Any]:
        from annotation.models import ModelVersion, TrainingJob
        from annotation.services.training import training_job_create

        t0 = time.monotonic()
        labelled = 0
        if self.spec["line"] != "ceiling":
            labelled = self._label(self.spec["batch"])
        else:
            from annotation.models import CellImage

            self.labels = CellImage.objects.filter(current_label__isnull=False).count()
        t_label = time.monotonic() - t0
        before = ModelVersion.objects.active()
        job = training_job_create(trigger=TrainingJob.Trigger.ADMIN, user=self.admin)
        self._wait(
            "the training job",
            lambda: (
                TrainingJob.objects.get(pk=job.pk).status
                in (TrainingJob.Status.SUCCEEDED, TrainingJob.Status.FAILED, "cancelled")
            ),
        )
        job.refresh_from_db()
        t_train = time.monotonic() - t0 - t_label
        after = ModelVersion.objects.active()
        promoted = after is not None and before is not None and after.pk != before.pk
        note = f"job {job.status}"
        if job.status == TrainingJob.Status.FAILED:
            note += f": {job.error}"
        elif not promoted and job.result_version is not None:
            from annotation.rules import guard_comparison

            guard = guard_comparison(job.result_version, after)
            note += f", held back: {'; '.join(guard['reasons'])}"
        elif promoted:
            note += ", promoted"
        self._wait("rescoring", self._scored)
        t_rescore = time.monotonic() - t0 - t_label - t_train
        test, name = self._evaluate()
        print(
            f"[{self.spec['line']}] round {number}: {labelled} labels ({self.labels} in all), "
            f"train {t_train:.0f} s, rescore {t_rescore:.0f} s; {note}; test balanced "
            f"{test['balanced_accuracy']:.3f}",
            flush=True,
        )
        return {
            "round": number,
            "labels": self.labels,
            "active": name,
            "promoted": promoted,
            "test": test,
            "seconds": {
                "label": round(t_label, 1),
                "train": round(t_train, 1),
                "rescore": round(t_rescore, 1),
            },
            "minutes": round((time.monotonic() - t0) / 60, 2),
            "note": note,
        }


if __name__ == "__main__":
    main()
