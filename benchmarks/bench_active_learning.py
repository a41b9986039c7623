"""Label efficiency of the product's active learning (issue 10), documented configuration.

    .venv/bin/python benchmarks/bench_active_learning.py [--repeats 10] [--out runs/bench/al_sim]

Runs ``python -m mlworker.al_sim`` (see mlworker/al_sim.md): a base model trained once on
../shared/data/pbc, the deepapl pool (another hospital, classes the base never saw), a
random seed of 100 labels, 15 rounds of 100, head-only retraining, a patient-disjoint
test split. Prints how many labels ``default`` needs to reach the balanced accuracy that
``random`` reaches with the whole budget, next to random's own (the baseline), copies
the learning curves to docs/al_learning_curves.png and ends with the RESULT line that
benchmarks/run_all.py reads. The base model and features are cached in the out folder,
so a second run only replays the rounds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
STRATEGIES = "random,least_confidence,margin,entropy,weak_class,kcenter,default"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-data", default=str(SHARED / "pbc"))
    parser.add_argument("--pool-data", default=str(SHARED / "deepapl"))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--crop", default="0.7", help="centre crop for base and pool images")
    parser.add_argument("--out", default=str(REPO / "runs" / "bench" / "al_sim"))
    parser.add_argument(
        "--plot",
        default=str(REPO / "docs" / "al_learning_curves.png"),
        help="where to copy learning_curves.png ('' for nowhere)",
    )
    args = parser.parse_args()
    cmd = [
        sys.executable,
        "-m",
        "mlworker.al_sim",
        "--base-data",
        args.base_data,
        "--pool-data",
        args.pool_data,
        "--strategies",
        STRATEGIES,
        "--seed-labels",
        "100",
        "--batch",
        "100",
        "--rounds",
        "15",
        "--repeats",
        str(args.repeats),
        "--crop",
        args.crop,
        "--out",
        args.out,
    ]
    start = time.perf_counter()
    status = subprocess.run(cmd, cwd=REPO).returncode
    elapsed = time.perf_counter() - start
    command = "python -m mlworker.al_sim " + " ".join(cmd[3:]).replace(str(REPO) + "/", "").replace(
        str(REPO.parent), ".."
    )
    if status != 0:
        print(
            "RESULT "
            + json.dumps(
                {
                    "name": "active_learning",
                    "figure": None,
                    "note": f"al_sim failed (exit {status})",
                    "command": command,
                }
            )
        )
        return status
    out = Path(args.out)
    summary = json.loads((out / "summary.json").read_text())
    details = json.loads((out / "details.json").read_text())
    budget = summary["budget"]
    target = summary["random_final_balanced_accuracy"]
    print(
        f"\nrandom reaches balanced accuracy {target:.3f} with its whole budget of {budget} labels"
    )
    print(
        f"{'strategy':18s}{'labels to reach':>16s}{'% of random':>12s}{'final BA':>10s}{'AUC':>8s}"
    )
    for name, s in summary["strategies"].items():
        reach = s["labels_to_reach_random_final"]
        share = "never" if reach is None else f"{100 * reach / budget:.0f} %"
        print(
            f"{name:18s}{reach if reach is not None else 'never':>16}{share:>12s}"
            f"{s['final_balanced_accuracy']:>10.3f}{s['auc']:>8.3f}"
        )
    default = summary["strategies"].get("default", {})
    reach = default.get("labels_to_reach_random_final")
    goal = details.get("goal", {})
    met = bool(goal.get("reaches_with_half_the_labels") and goal.get("never_worse_beyond_spread"))
    print(
        f"goal: default reaches it with <= 50 % of random's labels and never falls below random "
        f"by more than its spread: {'met' if met else 'NOT met'} ({goal}); {elapsed:.0f} s"
    )
    plots = []
    if args.plot:
        shutil.copyfile(out / "learning_curves.png", args.plot)
        plots.append(str(Path(args.plot).resolve().relative_to(REPO)))
    result = {
        "name": "active_learning",
        "figure": reach if reach is not None else f"not reached within {budget}",
        "unit": "labels",
        "goal": f"≤ {budget // 2} (50 % of random's)",
        "baseline": budget,
        "ratio": round(budget / reach, 2) if reach else None,
        "met": met,
        "command": command,
        "note": (
            f"default to reach random's final BA {target:.3f}; final BA default "
            f"{default.get('final_balanced_accuracy')} vs random "
            f"{summary['strategies'].get('random', {}).get('final_balanced_accuracy')}; "
            f"AUC {default.get('auc')} vs {summary['strategies'].get('random', {}).get('auc')}; "
            f"never below random beyond its spread: {goal.get('never_worse_beyond_spread')}; "
            f"{details['timings']['total_s']:.0f} s"
        ),
        "plots": plots,
    }
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
