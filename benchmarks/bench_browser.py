"""Browser latency: key press -> next cell on screen, in headless Chromium.

Runs the labelling end-to-end test (tests/e2e/test_labelling.py: uvicorn, PostgreSQL,
Redis, a Celery worker and Debian Chromium driven by Playwright), whose last part labels
50 queued cells by keyboard and measures in the page, with ``performance.measure``, from
the key event to the frame after the next cell's image is painted. Twice, side by side:

- baseline: ``WBC_LABEL_PREFETCH=0``, one lease at a time (submit, then next, then load
  the image), what a plain form-per-cell UI does;
- ours: the default, 4 cells leased and their image, detail and mask loaded ahead.

    DATABASE_URL=... REDIS_URL=... .venv/bin/python benchmarks/bench_browser.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "test-artifacts" / "e2e" / "label-latency.json"


def measure(prefetch: int | None) -> list[float]:
    env = dict(os.environ)
    if prefetch is not None:
        env["WBC_LABEL_PREFETCH"] = str(prefetch)
    SAMPLES.unlink(missing_ok=True)
    cmd = [
        str(REPO / ".venv" / "bin" / "pytest"), "-q", "-s", "-p", "no:cacheprovider",
        "tests/e2e/test_labelling.py",
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, env=env)
    if done.returncode != 0 or not SAMPLES.is_file():
        raise SystemExit(f"the labelling test failed (exit {done.returncode}); see its output")
    return [float(x) for x in json.loads(SAMPLES.read_text())["samples_ms"]]


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    start = time.perf_counter()
    runs = {
        "baseline: one cell at a time": measure(0),
        "ours: 4 cells ahead": measure(None),
    }
    print(f"{'run':30s} {'labels':>6s} {'p50 ms':>7s} {'p95 ms':>7s}")
    for name, samples in runs.items():
        print(f"{name:30s} {len(samples):6d} {pct(samples, 50):7.1f} {pct(samples, 95):7.1f}")
    base, ours = (pct(samples, 95) for samples in runs.values())
    print(
        "RESULT "
        + json.dumps(
            {
                "name": "browser",
                "figure": round(ours, 1),
                "unit": "ms p95",
                "goal": "≤ 100 ms p95",
                "met": ours <= 100,
                "baseline": round(base, 1),
                "ratio": round(base / ours, 2) if ours else None,
                "command": "benchmarks/bench_browser.py",
                "note": f"key press -> next cell painted, {len(runs['ours: 4 cells ahead'])} "
                f"labels each; p50 {pct(runs['ours: 4 cells ahead'], 50):.0f} ms vs "
                f"{pct(runs['baseline: one cell at a time'], 50):.0f} ms; "
                f"{time.perf_counter() - start:.0f} s",
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
