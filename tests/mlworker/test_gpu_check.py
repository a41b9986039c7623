"""benchmarks/gpu_check.sh in smoke mode: the prepared GPU check runs every line of its
code here (tiny sizes, on the CPU), so it is ready for a GPU machine (#20)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_smoke_prints_and_writes_its_json(tmp_path: Path) -> None:
    env = dict(
        os.environ, OUT=str(tmp_path), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    )
    done = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--smoke"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["smoke"] is True and "figures mean nothing" in report["note"]
    assert report["goal"]["met"] is False  # a smoke run never claims the goal
    scoring = report["scoring"]
    assert scoring["arch"] == "resnet152" and scoring["images"] == 16
    assert scoring["batch_size_chosen"] in (4, 8)
    assert scoring["ours_images_per_s"] == max(scoring["ours_images_per_s_by_batch"].values())
    assert scoring["plain_images_per_s"] > 0 and scoring["vs_plain"] > 0
    if not torch.cuda.is_available():
        assert scoring["compiled"] == "skipped (no GPU)"
    training = report["training"]
    assert training["batch_size"] == 32
    assert training["stage1_head_images_per_s"] > 0 and training["stage2_layer4_images_per_s"] > 0
    # the JSON printed is the JSON written
    assert json.loads(done.stdout[done.stdout.index("{") :]) == report
