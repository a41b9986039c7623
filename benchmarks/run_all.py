"""Run every benchmark and rewrite the summary table at the top of docs/benchmarks.md.

    .venv/bin/python benchmarks/run_all.py                 # everything (long: about an hour)
    .venv/bin/python benchmarks/run_all.py --only segmentation,active_learning
    .venv/bin/python benchmarks/run_all.py --list

Each ``benchmarks/bench_*.py`` runs as its own process with the service environment
(DATABASE_URL, REDIS_URL from scripts/service_env.py unless already set). Its output is
shown live and kept in ``runs/bench/<name>.log``. The convention: a script ends with one
line ``RESULT {json}`` with keys ``name, figure, unit, goal, baseline, ratio, command,
note`` (optionally ``met`` and ``plots``), or ``skipped: "reason"`` when it cannot run
here (a GPU-only benchmark on a CPU machine). A script without that line gets a row that
says so, with its exit status, instead of a number.

The table sits between two markers in docs/benchmarks.md; everything else in that file
(the detailed sections each benchmark's author wrote) is left as it is. With ``--only``
the other rows are kept from the previous table, each with the date it was measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "benchmarks.md"
START = "<!-- bench-table:start (written by benchmarks/run_all.py; edit the sections below) -->"
END = "<!-- bench-table:end -->"
DATA = re.compile(r"<!-- bench-rows: (.*?) -->", re.S)

# The benchmarks the project should have, in the order the table lists them. A name
# without a script gets a row saying so, so a gap is visible rather than silent.
EXPECTED: tuple[tuple[str, str], ...] = (
    ("import", "import throughput"),
    ("segmentation", "segmentation quality and speed"),
    ("scoring", "scoring throughput"),
    ("training", "training proxy"),
    ("pipeline", "import to routed pipeline"),
    ("api", "review-queue API latency"),
    ("browser", "browser latency"),
    ("load", "20 annotators through the API (integrity + latency)"),
    ("active_learning", "active-learning label efficiency"),
)

# Arguments run_all passes to a script (the documented configuration of each).
ARGS: dict[str, list[str]] = {
    "segmentation": ["--json", "runs/bench/segmentation.json"],
    "scoring": ["--json", "runs/bench/scoring.json"],
    # ResNet-152 through the whole pipeline takes over 10 minutes on this CPU; its figures
    # are in the Pipeline section (bench_pipeline.py --archs resnet18,resnet152).
    "pipeline": ["--archs", "resnet18"],
}


def service_env() -> dict[str, str]:
    env = dict(os.environ)
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "service_env.py")],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
    )
    sys.stderr.write(out.stderr)
    for line in out.stdout.splitlines():
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = shlex.split(value)[0] if value else ""
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def machine() -> str:
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        memory = f", {mem:.0f} GiB"
    except (ValueError, OSError, AttributeError):
        memory = ""
    gpu = "no GPU"
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if out.returncode == 0 and out.stdout.strip():
            gpu = out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{os.cpu_count()} CPUs{memory}, {gpu}, Python {platform.python_version()}"


def parse_results(text: str) -> list[dict[str, Any]]:
    results = []
    for line in text.splitlines():
        if line.startswith("RESULT "):
            try:
                value = json.loads(line.removeprefix("RESULT "))
            except json.JSONDecodeError as exc:
                value = {"note": f"unreadable RESULT line ({exc})"}
            if isinstance(value, dict):
                results.append(value)
    return results


def run_one(
    name: str, script: Path, env: dict[str, str], timeout: float, logs: Path
) -> list[dict[str, Any]]:
    cmd = [sys.executable, str(script.relative_to(REPO)), *ARGS.get(name, [])]
    shown = " ".join(shlex.quote(c) for c in [".venv/bin/python", *cmd[1:]])
    print(f"\n== {name}: {shown}", flush=True)
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name}.log"
    start = time.perf_counter()
    lines: list[str] = []
    status: int | str
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:  # live, and kept
                sys.stdout.write(line)
                log.write(line)
                lines.append(line)
                if time.perf_counter() - start > timeout:
                    raise subprocess.TimeoutExpired(cmd, timeout)
            status = proc.wait()
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            status = f"killed after {timeout:.0f} s"
        except KeyboardInterrupt:
            proc.kill()
            raise
    elapsed = time.perf_counter() - start
    results = parse_results("".join(lines))
    base = {
        "name": name,
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "command": shown,
        "seconds": round(elapsed),
        "status": status,
    }
    if not results:
        why = "no RESULT line; see its section below"
        if status != 0:
            why = f"exit status {status}; " + why
        return [base | {"note": why}]
    rows = []
    for r in results:
        row = base | {k: v for k, v in r.items() if v is not None or k not in base}
        if status != 0:
            row["note"] = f"{row.get('note') or ''} (exit status {status})".strip()
        rows.append(row)
    return rows


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def render_table(rows: list[dict[str, Any]]) -> str:
    header = "| benchmark | figure | goal | baseline | ratio | date | machine | command |\n"
    header += "|---|---|---|---|---|---|---|---|\n"
    body = []
    plots = []
    for r in rows:
        title = r.get("title") or r["name"]
        unit = f" {r['unit']}" if r.get("unit") else ""
        if r.get("skipped"):
            figure = f"not run here: {r['skipped']}"
        elif r.get("figure") is None:
            figure = r.get("note") or "not measured"
        else:
            figure = f"{_cell(r['figure'])}{unit}"
            if r.get("note"):
                figure += f" ({r['note']})"
        goal = _cell(r.get("goal"))
        if "met" in r and r.get("figure") is not None:
            goal += " ✓" if r["met"] else " ✗ not met"
        command = f"`{_cell(r['command'])}`" if r.get("command") else "—"
        baseline = _cell(r.get("baseline"))
        if r.get("baseline") is not None and r.get("figure") is not None:
            baseline += unit
        body.append(
            f"| {_cell(title)} | {figure} | {goal} | {baseline} | {_cell(r.get('ratio'))} | "
            f"{_cell(r.get('date'))} | {_cell(r.get('machine'))} | {command} |"
        )
        plots += [(title, p) for p in r.get("plots") or []]
    text = header + "\n".join(body) + "\n"
    if plots:
        text += (
            "\nPlots: "
            + ", ".join(
                f"[{t}]({Path(p).name if p.startswith('docs/') else '../' + p})" for t, p in plots
            )
            + "\n"
        )
    return text


def rewrite_docs(rows: list[dict[str, Any]], docs: Path) -> None:
    text = docs.read_text() if docs.exists() else "# Benchmarks\n"
    block = (
        f"{START}\n## Summary\n\nWritten by `make bench` (`.venv/bin/python benchmarks/run_all.py`);"
        " each row is the last run of that benchmark, on the machine named. Details, method"
        " and history are in the sections below.\n\n"
        f"{render_table(rows)}\n<!-- bench-rows: {json.dumps(rows, sort_keys=True)} -->\n{END}\n"
    )
    if START in text and END in text:
        before, rest = text.split(START, 1)
        after = rest.split(END, 1)[1].lstrip("\n")
        text = before + block + "\n" + after
    else:
        match = re.search(r"^## ", text, re.M)
        at = match.start() if match else len(text)
        text = text[:at] + block + "\n" + text[at:]
    docs.write_text(text)


def previous_rows(docs: Path) -> dict[str, list[dict[str, Any]]]:
    if not docs.exists():
        return {}
    match = DATA.search(docs.read_text())
    if not match:
        return {}
    rows: dict[str, list[dict[str, Any]]] = {}
    for row in json.loads(match.group(1)):
        rows.setdefault(row["name"], []).append(row)
    return rows


# Scripts whose file name the issues fixed, outside the bench_<name>.py convention.
NAMED_SCRIPTS: dict[str, str] = {"load": "load_annotators.py"}


def discover() -> dict[str, Path]:
    found = {
        p.stem.removeprefix("bench_"): p for p in sorted((REPO / "benchmarks").glob("bench_*.py"))
    }
    for name, file in NAMED_SCRIPTS.items():
        if (REPO / "benchmarks" / file).is_file():
            found[name] = REPO / "benchmarks" / file
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated names (default: all)")
    parser.add_argument("--skip", default="", help="comma-separated names to leave out")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per benchmark")
    parser.add_argument("--docs", type=Path, default=DOCS, help="the file whose table to rewrite")
    parser.add_argument("--no-docs", action="store_true", help="run, print, change no file")
    parser.add_argument("--logs", type=Path, default=REPO / "runs" / "bench", help="log folder")
    parser.add_argument("--list", action="store_true", help="list benchmarks and exit")
    args = parser.parse_args()

    scripts = discover()
    titles = dict(EXPECTED)
    names = [n for n, _ in EXPECTED] + [n for n in scripts if n not in titles]
    if args.list:
        for n in names:
            print(f"{n:18s} {scripts.get(n, '(no script yet)')}")
        return 0
    only = {n for n in args.only.split(",") if n}
    skip = {n for n in args.skip.split(",") if n}
    unknown = (only | skip) - set(names)
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(sorted(unknown))}; see --list")
    selected = [n for n in names if (not only or n in only) and n not in skip]
    kept = previous_rows(args.docs)
    env = service_env()
    fresh: dict[str, list[dict[str, Any]]] = {}
    for n in selected:
        if n not in scripts:
            fresh[n] = [
                {
                    "name": n,
                    "date": dt.date.today().isoformat(),
                    "note": f"no benchmarks/bench_{n}.py yet",
                }
            ]
            continue
        fresh[n] = run_one(n, scripts[n], env, args.timeout, args.logs)
    rows: list[dict[str, Any]] = []
    for n in names:
        got = fresh.get(n) or kept.get(n)
        if not got:
            why = "not run by run_all yet; see its section below" if n in scripts else None
            why = why or f"no benchmarks/bench_{n}.py yet"
            got = [{"name": n, "note": why}]
        for row in got:
            row.setdefault("title", titles.get(n, n))
        rows += got
    print("\n" + render_table([r for n in selected for r in fresh[n]]))
    if not args.no_docs:
        rewrite_docs(rows, args.docs)
        print(
            f"rewrote the table in {args.docs.relative_to(REPO) if args.docs.is_relative_to(REPO) else args.docs}"
        )
    failed = [n for n in selected if any(r.get("status") not in (None, 0) for r in fresh[n])]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
