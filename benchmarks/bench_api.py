"""Review-queue API under load: next -> submit from concurrent clients against uvicorn.

10,000 queued cells in a scratch PostgreSQL database, the real ASGI app under uvicorn on
127.0.0.1, Redis for the channel layer (queue-count broadcasts). Each client is a
hematologist with its own token doing POST /api/queue/next/ then
POST /api/queue/items/<id>/submit/ in a loop. Prints requests/s and p50/p95/p99 latency
for 20 clients next to the same loop with one client (no contention), then checks that
every submitted label is stored exactly once and that no item was leased to two clients.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/14 \\
        .venv/bin/python benchmarks/bench_api.py [--clients 20] [--duration 60]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.processes import stop_process  # noqa: E402

CODES = ["NE", "LY", "MO", "EO", "BA", "ME", "MY", "PR", "LR", "LA", "BL", "PC", "NR", "AR"]


def setup_django(db_name: str, media: Path) -> str:
    import psycopg

    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    admin_url = base.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {db_name}")
        conn.execute(f"CREATE DATABASE {db_name}")
    url = base.rsplit("/", 1)[0] + "/" + db_name
    os.environ["DATABASE_URL"] = url
    os.environ["MEDIA_ROOT"] = str(media)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wbcportal.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return url


def queue_seed(
    accession: str, n_cells: int, double_share: float = 0.0, arch: str = "resnet152"
) -> None:
    """One case of ``n_cells`` queued cells with an active model's predictions (low
    confidence); ``double_share`` of the items need two independent reads. Shared with
    load_annotators.py."""
    from annotation.models import Case, CellImage, ModelVersion, Prediction, ReviewItem

    rng = random.Random(0)
    case = Case.objects.create(accession_id=accession)
    version = ModelVersion.objects.create(
        name=accession.lower(), arch=arch, class_codes=CODES, status="active"
    )
    cells = CellImage.objects.bulk_create(
        [
            CellImage(
                case=case,
                image=f"cells/{accession.lower()}/{i:064x}.jpg",
                sha256=f"{i:064x}",
                width=360,
                height=363,
            )
            for i in range(n_cells)
        ],
        batch_size=2000,
    )
    predictions, items = [], []
    for cell in cells:
        top = rng.randrange(len(CODES))
        conf = rng.uniform(0.3, 0.8)
        probs = [(1 - conf) / (len(CODES) - 1)] * len(CODES)
        probs[top] = conf
        predictions.append(
            Prediction(
                cell=cell,
                model_version=version,
                probabilities=probs,
                top_code=CODES[top],
                confidence=conf,
                margin=conf - max(p for k, p in enumerate(probs) if k != top),
                entropy=1.0,
            )
        )
        items.append(
            ReviewItem(
                cell=cell,
                reasons=["low_confidence"],
                priority=1 - conf,
                model_version=version,
                labels_required=2 if double_share and rng.random() < double_share else 1,
            )
        )
    Prediction.objects.bulk_create(predictions, batch_size=2000)
    ReviewItem.objects.bulk_create(items, batch_size=2000)


def seed(n_cells: int, n_users: int) -> list[str]:
    """n_cells queued cells with an active model's predictions; one token per user."""
    from rest_framework.authtoken.models import Token

    from annotation.services.users import user_create_with_role

    queue_seed("BENCH", n_cells)
    tokens = []
    for i in range(n_users):
        user = user_create_with_role(
            username=f"bench{i}", password="bench-Long-pass-1", role="hematologist"
        )
        tokens.append(Token.objects.get_or_create(user=user)[0].key)  # type: ignore[misc]
    return tokens


def bench_asgi_app() -> object:
    """The project's ASGI app (uvicorn --factory), optionally with CONN_MAX_AGE set from
    BENCH_CONN_MAX_AGE: under ASGI, Django serves each request in its own thread, so a
    persistent connection (settings: conn_max_age=60) is opened per request and never
    reused; see --conn-max-age."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wbcportal.settings")
    from django.conf import settings

    if os.environ.get("BENCH_CONN_MAX_AGE"):
        settings.DATABASES["default"]["CONN_MAX_AGE"] = int(os.environ["BENCH_CONN_MAX_AGE"])
    from wbcportal.asgi import application

    if os.environ.get("BENCH_NO_BROADCAST"):
        # Diagnostic only: what the queue-count broadcast costs per request.
        import annotation.services.events as events

        events.queue_changed = lambda: None
    return application


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    port: int, workers: int, log: Path, conn_max_age: int | None, no_broadcast: bool = False
) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    if no_broadcast:
        env["BENCH_NO_BROADCAST"] = "1"
    env["PYTHONPATH"] = str(REPO)
    if conn_max_age is not None:
        env["BENCH_CONN_MAX_AGE"] = str(conn_max_age)
    env["WBC_API_TOKEN_RATE"] = "10000000/min"  # measure the queue, not the throttle
    env["LOG_LEVEL"] = "WARNING"
    cmd = [
        str(REPO / ".venv" / "bin" / "uvicorn"), "--factory", "benchmarks.bench_api:bench_asgi_app",
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=fh)
    import requests

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/health/", timeout=1).ok:
                return proc
        except requests.RequestException:
            time.sleep(0.3)
    raise RuntimeError("server did not answer /health/ within 60 s")


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.errors: dict[str, int] = defaultdict(int)
        self.leases: dict[int, set[int]] = defaultdict(set)  # item id -> client ids
        self.submitted: dict[int, tuple[int, str]] = {}  # item id -> (cell id, code)


def client_loop(
    base: str, token: str, client_id: int, until: float, rec: Recorder, rng: random.Random
) -> None:
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Token {token}"
    local: list[float] = []
    while time.monotonic() < until:
        t0 = time.perf_counter()
        r = session.post(f"{base}/api/queue/next/", timeout=30)
        local.append(time.perf_counter() - t0)
        if r.status_code == 204:
            break
        if r.status_code != 200:
            with rec.lock:
                rec.errors[f"next {r.status_code}"] += 1
            continue
        item = r.json()
        with rec.lock:
            rec.leases[item["id"]].add(client_id)
        code = rng.choice(CODES)
        t0 = time.perf_counter()
        r = session.post(
            f"{base}/api/queue/items/{item['id']}/submit/", json={"code": code}, timeout=30
        )
        local.append(time.perf_counter() - t0)
        with rec.lock:
            if r.status_code == 201:
                if item["id"] in rec.submitted:
                    rec.errors["submitted twice"] += 1
                rec.submitted[item["id"]] = (item["cell"]["id"], code)
            else:
                rec.errors[f"submit {r.status_code}"] += 1
    with rec.lock:
        rec.latencies.extend(local)


def floor_loop(
    base: str, token: str, client_id: int, until: float, rec: Recorder, rng: random.Random
) -> None:
    """The platform's floor: GET /api/auth/me/ (token lookup, roles, a tiny JSON body)
    in the same loop, to tell the queue's own cost from the stack's."""
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Token {token}"
    local: list[float] = []
    while time.monotonic() < until:
        t0 = time.perf_counter()
        r = session.get(f"{base}/api/auth/me/", timeout=30)
        local.append(time.perf_counter() - t0)
        if r.status_code != 200:
            with rec.lock:
                rec.errors[f"me {r.status_code}"] += 1
    with rec.lock:
        rec.latencies.extend(local)


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out + [g for c in out for g in _children(c)]


def cpu_snapshot(server_pid: int, db_name: str) -> dict[str, dict[int, float]]:
    """CPU seconds so far, per process, of the web server (uvicorn and its workers), the
    PostgreSQL backends serving the scratch database, and this process (the load
    generator)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            [db_name],
        )
        backends = [row[0] for row in cursor.fetchall()]
    return {
        "server": {p: _proc_cpu_s(p) for p in [server_pid, *_children(server_pid)]},
        "postgres": {p: _proc_cpu_s(p) for p in backends},
        "clients": {0: time.process_time()},
    }


def cpu_used(
    before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]
) -> dict[str, float]:
    """CPU seconds per part between two snapshots (processes started in between count
    from zero; ones that ended in between are lost, which only undercounts)."""
    return {
        part: sum(v - before.get(part, {}).get(p, 0.0) for p, v in procs.items())
        for part, procs in after.items()
    }


def run(
    base: str, tokens: list[str], duration: float, rec: Recorder, loop: object = None
) -> tuple[float, int]:
    until = time.monotonic() + duration
    threads = [
        threading.Thread(
            target=loop or client_loop,  # type: ignore[arg-type]
            args=(base, tok, i, until, rec, random.Random(i)),
            daemon=True,
        )
        for i, tok in enumerate(tokens)
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, len(rec.latencies)


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000 if values else 0


def verify(recs: list[Recorder]) -> list[str]:
    from django.db.models import Count

    from annotation.models import Label, ReviewItem

    problems = []
    submitted: dict[int, tuple[int, str]] = {}
    for rec in recs:
        for item_id, clients in rec.leases.items():
            if len(clients) > 1:
                problems.append(f"item {item_id} leased to clients {sorted(clients)}")
        for key, value in rec.submitted.items():
            if key in submitted:
                problems.append(f"item {key} submitted in two runs")
            submitted[key] = value
        problems += [f"{k}: {v}" for k, v in rec.errors.items()]
    labels = list(Label.objects.filter(source="hematologist").values_list("cell_id", "code"))
    if len(labels) != len(submitted):
        problems.append(f"{len(submitted)} labels submitted, {len(labels)} stored")
    stored = defaultdict(list)
    for cell_id, code in labels:
        stored[cell_id].append(code)
    for item_id, (cell_id, code) in submitted.items():
        if stored.get(cell_id) != [code]:
            problems.append(f"item {item_id}: cell {cell_id} has labels {stored.get(cell_id)}")
    done = ReviewItem.objects.filter(status="done").count()
    if done != len(submitted):
        problems.append(f"{done} items done, {len(submitted)} submitted")
    twice = Label.objects.values("cell_id").annotate(n=Count("id")).filter(n__gt=1).count()
    if twice:
        problems.append(f"{twice} cells have more than one label")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cells", type=int, default=10_000, help="queued cells to seed")
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds, contended run")
    parser.add_argument(
        "--baseline-duration", type=float, default=15.0, help="seconds, one-client run"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="uvicorn worker processes (docker-compose.yml's default; 4 measured slower on 2 cores)",
    )
    parser.add_argument(
        "--floor-duration",
        type=float,
        default=15.0,
        help="seconds of the floor run (all clients on GET /api/auth/me/); 0 skips it",
    )
    parser.add_argument("--db", default="wbc_bench_api", help="scratch database (dropped)")
    parser.add_argument(
        "--conn-max-age",
        type=int,
        default=None,
        help="override the database CONN_MAX_AGE in the server (default: as settings.py)",
    )
    parser.add_argument(
        "--no-broadcast",
        action="store_true",
        help="diagnostic: skip the queue-count websocket broadcast after each change",
    )
    args = parser.parse_args()
    media = Path(tempfile.mkdtemp(prefix="bench-api-media-"))
    setup_django(args.db, media)
    tokens = seed(args.cells, args.clients)
    port = free_port()
    log = media / "server.log"
    server = start_server(port, args.workers, log, args.conn_max_age, args.no_broadcast)
    base = f"http://127.0.0.1:{port}"
    try:
        results = []
        recs = []
        phases: list[tuple[str, list[str], float, object]] = [
            ("baseline: 1 client", tokens[:1], args.baseline_duration, None),
        ]
        if args.floor_duration > 0:
            phases.append(
                (f"floor: {args.clients} x GET me", tokens, args.floor_duration, floor_loop)
            )
        phases.append((f"{args.clients} clients", tokens, args.duration, None))
        for name, toks, duration, loop in phases:
            rec = Recorder()
            before = cpu_snapshot(server.pid, args.db)
            elapsed, n = run(base, toks, duration, rec, loop)
            used = cpu_used(before, cpu_snapshot(server.pid, args.db))
            recs.append(rec)
            lat = rec.latencies
            per_request = {part: 1000 * s / max(n, 1) for part, s in used.items()}
            results.append(
                (
                    name,
                    n,
                    elapsed,
                    n / elapsed,
                    pct(lat, 50),
                    pct(lat, 95),
                    pct(lat, 99),
                    per_request,
                )
            )
        age = "as settings" if args.conn_max_age is None else args.conn_max_age
        print(
            f"uvicorn --workers {args.workers}, CONN_MAX_AGE {age}, {args.cells} queued "
            f"cells, next -> submit{', no broadcast' if args.no_broadcast else ''}"
        )
        print(
            f"{'run':22s} {'requests':>9s} {'s':>6s} {'req/s':>7s} {'p50 ms':>7s} {'p95 ms':>7s} "
            f"{'p99 ms':>7s}  CPU ms per request: server / postgres / clients"
        )
        for name, n, elapsed, rps, p50, p95, p99, cpu in results:
            print(
                f"{name:22s} {n:9d} {elapsed:6.1f} {rps:7.1f} {p50:7.1f} {p95:7.1f} {p99:7.1f}  "
                f"{cpu['server']:5.1f} / {cpu['postgres']:4.1f} / {cpu['clients']:4.1f}"
            )
        problems = verify(recs)
        labels = sum(len(r.submitted) for r in recs)
        if problems:
            print("VERIFY FAILED:\n  " + "\n  ".join(problems[:20]))
            sys.exit(1)
        print(f"verified: {labels} labels stored exactly once, no item leased to two clients")
        print(
            f"goal p95 <= 50 ms ({args.clients} clients): {'met' if results[-1][5] <= 50 else 'NOT met'}"
        )
        base_p95, p95, cpu = results[0][5], results[-1][5], results[-1][7]
        summary = {
            "name": "api",
            "figure": round(p95, 1),
            "unit": "ms p95",
            "goal": "≤ 50 ms p95",
            "met": p95 <= 50,
            "baseline": round(base_p95, 1),
            "ratio": round(base_p95 / p95, 2) if p95 else None,
            "command": "benchmarks/bench_api.py " + " ".join(sys.argv[1:]),
            "note": f"{args.clients} clients next -> submit, {results[-1][3]:.1f} req/s; "
            f"CPU per request: server {cpu['server']:.1f} ms, PostgreSQL {cpu['postgres']:.1f} "
            f"ms, clients {cpu['clients']:.1f} ms; "
            f"baseline: one client; {labels} labels verified exactly once"
            + (
                f"; floor (GET /api/auth/me/, {args.clients} clients): p95 {results[1][5]:.0f} ms"
                if args.floor_duration > 0
                else ""
            ),
        }
        print("RESULT " + json.dumps(summary), flush=True)
    finally:
        stop_process(server)


if __name__ == "__main__":
    main()
