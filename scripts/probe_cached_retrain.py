# ruff: noqa: E402  (imports follow the sys.path line that makes mlworker importable)
"""Probes behind the cached-trunk retraining defaults (docs/benchmarks.md, "Learning loop").

The demo model (PBC only) is retrained on n labelled cells of the deepapl pool and judged on
the patient-disjoint test side of the loop benchmark's split (never used for a decision):

    .venv/bin/python scripts/probe_cached_retrain.py base        # the start, and AdaBN alone
    .venv/bin/python scripts/probe_cached_retrain.py fit 500 --lr 0.003 --epochs-finetune 20 \\
        [--adapt-bn] [--tail-stages 2]
"""

from __future__ import annotations

import copy
import random
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DEEPAPL = REPO.parent / "shared" / "data" / "deepapl"

from mlworker.data import discover_samples
from mlworker.demo_model import load_demo_checkpoint
from mlworker.model import Checkpoint, model_from_checkpoint, preset_from_checkpoint
from mlworker.train import parse_train_config
from mlworker.train.cached import adapt_batchnorm, fit_cached
from mlworker.train.loop import evaluate_samples
from mlworker.train.splits import split_train_val


def evaluated(checkpoint: Checkpoint, test: list[Any], name: str) -> None:
    t0 = time.time()
    r = evaluate_samples(checkpoint, test)
    per_class = {
        c: (None if v["tpr"] is None else round(v["tpr"], 2)) for c, v in r["per_class"].items()
    }
    print(
        f"{name}: test balanced {r['balanced_accuracy']:.3f}, abnormal "
        f"{r['abnormal_tpr'] or 0:.3f}, n={len(test)} {per_class} ({time.time() - t0:.0f} s)",
        flush=True,
    )


def main() -> None:
    samples = [s for s in discover_samples(DEEPAPL) if s.code]
    pool, test = split_train_val(samples, 0.25, 0)
    init = load_demo_checkpoint()
    if sys.argv[1] == "base":
        evaluated(init, test, "demo")
        model = model_from_checkpoint(copy.deepcopy(init))
        used = adapt_batchnorm(model, pool, preset_from_checkpoint(init))
        adapted = copy.deepcopy(init)
        adapted["model"] = model.state_dict()
        evaluated(adapted, test, f"demo + AdaBN on {used} pool cells")
        return
    n = int(sys.argv[2])
    labelled = random.Random(0).sample(pool, n)
    train, val = split_train_val(labelled, 0.3, 0)
    flags = sys.argv[3:]
    config = parse_train_config(["--cached-trunk", *flags], init_checkpoint=init)
    t0 = time.time()
    result = fit_cached(train, val, config, init_checkpoint=init, adapt=pool)
    print(f"fit {time.time() - t0:.0f} s", result.metrics["cached_trunk"], flush=True)
    evaluated(result.checkpoint, test, f"cached {flags}")


if __name__ == "__main__":
    main()
