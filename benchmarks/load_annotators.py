"""Load test: simulated annotators through the real API, then an integrity check.

A scratch PostgreSQL database with queued cells (a share of them needing two independent
reads), the real ASGI app under uvicorn on 127.0.0.1 (loopback only), Redis for the
channel layer. Each simulated annotator is a user with its own token:

- hematologists take the next cell, and label it (mostly the cell's "true" class, so
  double reads sometimes disagree), skip it, or release it; now and then they read the
  queue counts, as the labelling screen does;
- senior hematologists label too, and between cells settle disagreements from the
  adjudication queue (two of them may race for the same item: the loser gets a 409).

First one annotator alone (the baseline), then all of them for ``--duration`` seconds.
Afterwards, from the database: every label the API acknowledged is stored exactly once
with the right cell, code and author (0 lost); no item was held by two people at once
(each lease interval as the clients saw it, never overlapping for one item); every label,
read, agreement, disagreement, adjudication and skip has its audit event. Prints the
counts and p50/p95/p99 latency per request kind.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/14 \\
        .venv/bin/python benchmarks/load_annotators.py [--annotators 20] [--duration 300]
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_api import (  # noqa: E402
    CODES,
    free_port,
    queue_seed,
    setup_django,
    start_server,
)
from tests.processes import stop_process  # noqa: E402


def seed(n_cells: int, double_share: float, n_hem: int, n_senior: int) -> list[tuple[str, bool]]:
    """Queued cells with an active model's predictions; returns (token, is_senior) per
    annotator. ``double_share`` of the items need two independent reads."""
    from django.contrib.auth.models import Permission
    from rest_framework.authtoken.models import Token

    from annotation.services.users import user_create_with_role

    queue_seed("LOAD", n_cells, double_share=double_share, arch="resnet18")
    annotators = []
    for i in range(n_hem + n_senior):
        senior = i >= n_hem
        user = user_create_with_role(
            username=f"{'senior' if senior else 'hem'}{i}",
            password="load-Long-pass-1",
            role="senior_hematologist" if senior else "hematologist",
        )
        if senior and not user.has_perm("annotation.adjudicate"):
            user.user_permissions.add(Permission.objects.get(codename="adjudicate"))
        annotators.append((Token.objects.get_or_create(user=user)[0].key, senior))  # type: ignore[misc]
    return annotators


@dataclass
class Lease:
    item: int
    client: int
    start: float  # the client had the lease in hand from here ...
    end: float | None = None  # ... until it sent submit / skip / release


@dataclass
class Recorder:
    lock: threading.Lock = field(default_factory=threading.Lock)
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    leases: list[Lease] = field(default_factory=list)
    labels: dict[int, tuple[int, str, str]] = field(default_factory=dict)  # id -> cell, code, user
    adjudicated: dict[int, tuple[int, str, str]] = field(default_factory=dict)
    skips: int = 0
    releases: int = 0
    lost_races: int = 0  # adjudication items another senior settled first (409)
    errors: Counter[str] = field(default_factory=Counter)


def pct(values: list[float], q: int) -> float:
    """The q-th percentile in ms (nearest rank; fine for one sample too)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] * 1000


def true_code(cell_id: int) -> str:
    return CODES[(cell_id * 7919) % len(CODES)]


def annotator_loop(
    base: str,
    token: str,
    username: str,
    senior: bool,
    client: int,
    until: float,
    think: float,
    rec: Recorder,
) -> None:
    import requests

    rng = random.Random(client)
    session = requests.Session()
    session.headers["Authorization"] = f"Token {token}"

    def call(kind: str, method: str, path: str, **kw: object) -> requests.Response:
        t0 = time.perf_counter()
        r = session.request(method, base + path, timeout=60, **kw)  # type: ignore[arg-type]
        with rec.lock:
            rec.latencies[kind].append(time.perf_counter() - t0)
        return r

    n = 0
    while time.monotonic() < until:
        n += 1
        if senior and n % 4 == 0:
            r = call("adjudication list", "GET", "/api/adjudication/")
            pending = r.json() if r.status_code == 200 else []
            if r.status_code != 200:
                with rec.lock:
                    rec.errors[f"adjudication list {r.status_code}"] += 1
            for entry in pending[:2]:
                if time.monotonic() >= until:
                    break
                code = true_code(entry["cell"])
                r = call("adjudicate", "POST", f"/api/adjudication/{entry['id']}/decide/",
                         json={"code": code})  # fmt: skip
                with rec.lock:
                    if r.status_code == 201:
                        rec.adjudicated[r.json()["id"]] = (entry["cell"], code, username)
                    elif r.status_code == 409:
                        rec.lost_races += 1
                    else:
                        rec.errors[f"adjudicate {r.status_code}"] += 1
        if n % 10 == 0:
            r = call("counts", "GET", "/api/queue/counts/")
            if r.status_code != 200:
                with rec.lock:
                    rec.errors[f"counts {r.status_code}"] += 1
        r = call("next", "POST", "/api/queue/next/")
        if r.status_code == 204:
            time.sleep(0.5)  # nothing for this reader right now
            continue
        if r.status_code != 200:
            with rec.lock:
                rec.errors[f"next {r.status_code}"] += 1
            continue
        item = r.json()
        lease = Lease(item=item["id"], client=client, start=time.monotonic())
        with rec.lock:
            rec.leases.append(lease)
        if think:
            time.sleep(rng.expovariate(1 / think))
        roll = rng.random()
        lease.end = time.monotonic()
        if roll < 0.03:
            r = call("skip", "POST", f"/api/queue/items/{item['id']}/skip/")
            with rec.lock:
                if r.status_code == 204:
                    rec.skips += 1
                else:
                    rec.errors[f"skip {r.status_code}"] += 1
        elif roll < 0.05:
            r = call("release", "POST", f"/api/queue/items/{item['id']}/release/")
            with rec.lock:
                if r.status_code == 204:
                    rec.releases += 1
                else:
                    rec.errors[f"release {r.status_code}"] += 1
        else:
            cell = item["cell"]["id"]
            code = true_code(cell) if rng.random() < 0.85 else rng.choice(CODES)
            r = call("submit", "POST", f"/api/queue/items/{item['id']}/submit/",
                     json={"code": code})  # fmt: skip
            with rec.lock:
                if r.status_code == 201:
                    label = r.json()
                    if label["id"] in rec.labels:
                        rec.errors["one label id acknowledged twice"] += 1
                    rec.labels[label["id"]] = (cell, code, username)
                else:
                    rec.errors[f"submit {r.status_code}"] += 1


def run(
    base: str, annotators: list[tuple[str, bool]], duration: float, think: float
) -> tuple[Recorder, float]:
    from rest_framework.authtoken.models import Token

    names = {t.key: t.user.get_username() for t in Token.objects.select_related("user")}
    rec = Recorder()
    until = time.monotonic() + duration
    threads = [
        threading.Thread(
            target=annotator_loop,
            args=(base, token, names[token], senior, i, until, think, rec),
            daemon=True,
        )
        for i, (token, senior) in enumerate(annotators)
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return rec, time.perf_counter() - start


def verify(recs: list[Recorder]) -> tuple[list[str], dict[str, int]]:
    """What the database holds against what the clients were told."""
    from annotation.models import AuditEvent, Label, ReviewItem

    problems: list[str] = []
    for rec in recs:
        problems += [f"{kind}: {n}" for kind, n in rec.errors.items()]
    # 0 lost labels: every acknowledged label is stored once, as acknowledged.
    acknowledged = {
        k: v for rec in recs for k, v in (*rec.labels.items(), *rec.adjudicated.items())
    }
    stored = {
        pk: (cell_id, code, username)
        for pk, cell_id, code, username in Label.objects.exclude(annotator=None).values_list(
            "pk", "cell_id", "code", "annotator__username"
        )
    }
    lost = [k for k in acknowledged if k not in stored]
    wrong = [k for k in acknowledged if k in stored and stored[k] != acknowledged[k]]
    unacknowledged = [k for k in stored if k not in acknowledged]
    if lost:
        problems.append(f"{len(lost)} acknowledged labels missing, e.g. {lost[:5]}")
    if wrong:
        problems.append(f"{len(wrong)} labels stored differently than acknowledged")
    if unacknowledged:
        problems.append(f"{len(unacknowledged)} labels stored that no client was told about")
    # 0 double leases: for one item, the clients' lease intervals never overlap.
    by_item: dict[int, list[Lease]] = defaultdict(list)
    for rec in recs:
        for lease in rec.leases:
            by_item[lease.item].append(lease)
    double = 0
    for leases in by_item.values():
        leases.sort(key=lambda lease: lease.start)
        for a, b in itertools.pairwise(leases):
            a_end = a.end if a.end is not None else float("inf")
            if a.client != b.client and b.start < a_end:
                double += 1
    if double:
        problems.append(f"{double} items held by two annotators at once")
    # Every audit event present.
    audited = Counter(
        (event["action"], (event["after"] or {}).get("label_id"))
        for event in AuditEvent.objects.filter(action__startswith="label.").values(
            "action", "after"
        )
    )
    reads = set(Label.objects.exclude(review_item=None).values_list("pk", flat=True))
    missing_audit = 0
    for label_id in stored:
        action = ("label.read",) if label_id in reads else ("label.create", "label.supersede")
        if not any(audited[(a, label_id)] == 1 for a in action):
            missing_audit += 1
    if missing_audit:
        problems.append(f"{missing_audit} labels without exactly one audit event")
    double_items = ReviewItem.objects.filter(labels_required__gt=1)
    decided = double_items.filter(reads__isnull=False).distinct()
    resolved = sum(1 for item in decided.prefetch_related("reads") if len(item.reads.all()) >= 2)
    outcome_events = AuditEvent.objects.filter(
        action__in=["label.agreed", "label.disagreement"]
    ).count()
    if outcome_events != resolved:
        problems.append(
            f"{resolved} double-read items fully read, {outcome_events} agreed/disagreement events"
        )
    skips = sum(rec.skips for rec in recs)
    skip_events = AuditEvent.objects.filter(action="review.skip").count()
    if skip_events != skips:
        problems.append(f"{skips} skips acknowledged, {skip_events} skip events")
    counts = {
        "labels": sum(len(rec.labels) for rec in recs),
        "independent reads": len(reads),
        "double-read items fully read": resolved,
        "disagreements": AuditEvent.objects.filter(action="label.disagreement").count(),
        "adjudicated": sum(len(rec.adjudicated) for rec in recs),
        "adjudication races lost (409, expected)": sum(rec.lost_races for rec in recs),
        "skips": skips,
        "releases": sum(rec.releases for rec in recs),
        "audit events": AuditEvent.objects.count(),
        "items leased": sum(len(rec.leases) for rec in recs),
    }
    return problems, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotators", type=int, default=20, help="simulated annotators")
    parser.add_argument("--seniors", type=int, default=3, help="of them, senior hematologists")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds, all annotators")
    parser.add_argument("--baseline-duration", type=float, default=20.0, help="seconds, one alone")
    parser.add_argument("--think", type=float, default=0.25,
                        help="mean seconds an annotator looks at a cell (exponential)")  # fmt: skip
    parser.add_argument("--cells", type=int, default=20_000, help="queued cells to seed")
    parser.add_argument("--double-share", type=float, default=0.3,
                        help="share of the items that need two independent reads")  # fmt: skip
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--db", default="wbc_load_annotators", help="scratch database (dropped)")
    args = parser.parse_args()
    if not 0 < args.seniors < args.annotators:
        parser.error("--seniors must be at least 1 and fewer than --annotators")

    media = Path(tempfile.mkdtemp(prefix="load-annotators-"))
    setup_django(args.db, media)
    annotators = seed(args.cells, args.double_share, args.annotators - args.seniors, args.seniors)
    port = free_port()
    server = start_server(port, args.workers, media / "server.log", None)
    base = f"http://127.0.0.1:{port}"
    try:
        runs = []
        for name, group, duration in (
            ("baseline: 1 annotator", annotators[:1], args.baseline_duration),
            (f"{args.annotators} annotators", annotators, args.duration),
        ):
            rec, elapsed = run(base, group, duration, args.think)
            runs.append((name, rec, elapsed))
    finally:
        stop_process(server, timeout=30)

    print(
        f"uvicorn --workers {args.workers}, {args.cells} queued cells "
        f"({args.double_share:.0%} double-read), think time {args.think} s mean"
    )
    header = (
        f"{'run':24s} {'kind':20s} {'requests':>8s} {'p50 ms':>7s} {'p95 ms':>7s} {'p99 ms':>7s}"
    )
    print(header)
    for name, rec, elapsed in runs:
        every = [x for values in rec.latencies.values() for x in values]
        for kind, values in sorted(rec.latencies.items()):
            print(f"{name:24s} {kind:20s} {len(values):8d} {pct(values, 50):7.1f} "
                  f"{pct(values, 95):7.1f} {pct(values, 99):7.1f}")  # fmt: skip
        print(f"{name:24s} {'all':20s} {len(every):8d} {pct(every, 50):7.1f} "
              f"{pct(every, 95):7.1f} {pct(every, 99):7.1f}   {len(every) / elapsed:.1f} req/s")  # fmt: skip
    problems, counts = verify([rec for _, rec, _ in runs])
    for key, value in counts.items():
        print(f"{key:42s} {value:8d}")
    base_p95 = pct([x for v in runs[0][1].latencies.values() for x in v], 95)
    p95 = pct([x for v in runs[-1][1].latencies.values() for x in v], 95)
    if problems:
        print("VERIFY FAILED:\n  " + "\n  ".join(problems[:20]))
    else:
        print(
            "verified: 0 lost labels, 0 items held by two annotators at once, "
            "every label, read, agreement, disagreement and skip audited"
        )
    summary = {
        "name": "load",
        "figure": round(p95, 1),
        "unit": "ms p95",
        "goal": "0 lost labels, 0 double leases, every audit event",
        "met": not problems,
        "baseline": round(base_p95, 1),
        "ratio": round(base_p95 / p95, 2) if p95 else None,
        "command": "benchmarks/load_annotators.py " + " ".join(sys.argv[1:]),
        "note": f"{args.annotators} annotators for {args.duration:.0f} s: {counts['labels']} "
        f"labels, {counts['adjudicated']} adjudicated, {counts['skips']} skips; baseline: one "
        "annotator alone" + ("" if not problems else f"; FAILED: {problems[0]}"),
    }
    print("RESULT " + json.dumps(summary), flush=True)
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
