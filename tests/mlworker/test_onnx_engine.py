"""The ONNX Runtime scoring engine against the torch reference, on real cells and real
weights (random-init ResNet-18 with BatchNorm statistics from real cells; the
ImageNet-pretrained EfficientNet-Lite0 of the installed package; the trained demo model)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mlworker import onnx_engine
from mlworker.data import Sample, decode_file
from mlworker.demo_model import load_demo_checkpoint
from mlworker.device import choose_runtime
from mlworker.metrics import classification_metrics, confusion_matrix
from mlworker.model import (
    Checkpoint,
    build_classifier,
    input_scaling,
    make_checkpoint,
    save_checkpoint,
)
from mlworker.onnx_engine import (
    FP32_TOLERANCE,
    INT8_MIN_AGREEMENT,
    OnnxEngineError,
    OnnxModel,
    check_engine,
    checkpoint_key,
    export_onnx,
    prepare_onnx,
)
from mlworker.presets import EvalPreset, normalization
from mlworker.score import Scorer, get_args_parser, main
from tests.paths import SHARED_DATA

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")

PBC = SHARED_DATA / "pbc"
CPU = choose_runtime("cpu", "fp32")
CODES = ("NE", "LY", "MO", "EO", "BA", "MY", "PR", "ME", "NR")


def cells(per_class: int, skip: int = 0) -> list[Path]:
    """Real PBC cells, ``per_class`` of each class (after the first ``skip``)."""
    return [
        p for code in CODES for p in sorted((PBC / code).glob("*.jpg"))[skip : skip + per_class]
    ]


def with_real_batchnorm(arch: str, size: int, weights: str | None = None) -> torch.nn.Module:
    """``arch`` whose BatchNorm statistics come from real cells, so that its outputs are
    spread out (a random net with default statistics gives one-hot softmaxes, which
    would make any comparison of probabilities trivially pass)."""
    torch.manual_seed(0)
    model = build_classifier(arch, weights=weights)
    preset = EvalPreset(size, *normalization(input_scaling(arch)))
    batch = torch.stack([preset(decode_file(p)) for p in cells(3, skip=40)])
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(batch)
    return model.eval()


def checkpoint_of(arch: str, size: int, tta: str, temperature: float, **kw: str) -> Checkpoint:
    model = with_real_batchnorm(arch, size, **kw)
    return make_checkpoint(
        model, arch=arch, input_size=size, temperature=temperature, args={"tta": tta}
    )


def compare_engines(checkpoint: Checkpoint, images: list[Path], tmp_path: Path) -> dict:
    torch_scores = Scorer(checkpoint, runtime=CPU).score(images, batch_size=8)
    onnx_scorer = Scorer(
        checkpoint, runtime=CPU, engine="onnx", onnx_dir=tmp_path, calibration=images[:4]
    )
    assert onnx_scorer.engine == "onnx"
    onnx_scores = onnx_scorer.score(images, batch_size=8)
    p_torch = np.stack([s.probabilities for s in torch_scores])
    p_onnx = np.stack([s.probabilities for s in onnx_scores])
    f_torch = np.stack([s.features for s in torch_scores])
    f_onnx = np.stack([s.features for s in onnx_scores])
    return {
        "max_prob_diff": float(np.abs(p_torch - p_onnx).max()),
        "feature_rel": float(np.linalg.norm(f_torch - f_onnx) / np.linalg.norm(f_torch)),
        "top1_same": [
            a.top_class == b.top_class for a, b in zip(torch_scores, onnx_scores, strict=False)
        ],
        "mean_max_prob": float(p_torch.max(1).mean()),
        "entropy_diff": max(
            abs(a.entropy - b.entropy) for a, b in zip(torch_scores, onnx_scores, strict=True)
        ),
    }


@pytest.mark.parametrize(
    ("arch", "size", "tta", "weights"),
    [
        ("resnet18", 64, "flips", None),  # the flip-TTA path
        ("resnet18", 64, "none", None),
        ("efficientnet_lite0", 112, "flips", "imagenet"),  # depthwise, "same" padding
    ],
)
def test_fp32_export_scores_like_torch(arch, size, tta, weights, tmp_path):
    kw = {"weights": weights} if weights else {}
    checkpoint = checkpoint_of(arch, size, tta, temperature=1.7, **kw)
    got = compare_engines(checkpoint, cells(2), tmp_path)
    # the comparison means something: probabilities are not one-hot
    assert got["mean_max_prob"] < 0.95, got
    assert got["max_prob_diff"] <= FP32_TOLERANCE, got
    assert got["feature_rel"] < 1e-4, got
    assert all(got["top1_same"]) and got["entropy_diff"] < 1e-3, got


def test_temperature_and_tta_are_part_of_the_exported_graph(tmp_path):
    """A different temperature or TTA is another graph (another file), and each one
    scores like its torch counterpart, not like the first export."""
    base = checkpoint_of("resnet18", 48, "none", temperature=1.0)
    hotter = dict(base, temperature=3.0)
    flipped = dict(base, args={"tta": "flips"})
    images = cells(1)
    keys = {checkpoint_key(c) for c in (base, hotter, flipped)}  # type: ignore[arg-type]
    assert len(keys) == 3
    probs = {}
    for name, ckpt in (("base", base), ("hotter", hotter), ("flipped", flipped)):
        onnx = Scorer(ckpt, runtime=CPU, engine="onnx", onnx_dir=tmp_path).score(images)
        ref = Scorer(ckpt, runtime=CPU).score(images)
        p = np.stack([s.probabilities for s in onnx])
        assert np.abs(p - np.stack([s.probabilities for s in ref])).max() <= FP32_TOLERANCE
        probs[name] = p
    assert len(list(tmp_path.glob("*.fp32.onnx"))) == 3
    # hotter is flatter, and flips change the answer
    assert probs["hotter"].max(1).mean() < probs["base"].max(1).mean()
    assert np.abs(probs["flipped"] - probs["base"]).max() > 1e-3


def test_exports_are_cached_and_reused(tmp_path):
    checkpoint = checkpoint_of("resnet18", 32, "none", temperature=1.0)
    first = prepare_onnx(checkpoint, "onnx", tmp_path)
    stamp = first.path.stat().st_mtime_ns
    again = prepare_onnx(checkpoint, "onnx", tmp_path)
    assert again.path == first.path and again.path.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]  # no temporary left
    other = dict(checkpoint, model={k: v.clone() for k, v in checkpoint["model"].items()})
    other["model"]["fc.bias"] += 0.5
    assert prepare_onnx(other, "onnx", tmp_path).path != first.path  # type: ignore[arg-type]


def test_an_export_that_disagrees_with_torch_is_refused_and_not_written(tmp_path):
    checkpoint = checkpoint_of("resnet18", 32, "none", temperature=1.0)
    with pytest.raises(OnnxEngineError, match="differs from torch"):
        export_onnx(checkpoint, tmp_path / "m.onnx", tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_export_leaves_the_scorer_on_torch(tmp_path, caplog):
    checkpoint = checkpoint_of("resnet18", 32, "none", temperature=1.0)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    images = cells(1)
    scorer = Scorer(checkpoint, runtime=CPU, engine="onnx", onnx_dir=blocker / "cache")
    assert scorer.engine == "torch" and scorer.engine_requested == "onnx"
    assert "scoring with torch" in caplog.text
    reference = Scorer(checkpoint, runtime=CPU).score(images)
    got = scorer.score(images)
    assert [s.top_class for s in got] == [s.top_class for s in reference]
    # int8 without any readable calibration cell: torch too, said so
    unreadable = tmp_path / "broken.jpg"
    unreadable.write_bytes(b"not a jpeg")
    int8 = Scorer(
        checkpoint, runtime=CPU, engine="onnx-int8", onnx_dir=tmp_path, calibration=[unreadable]
    )
    assert int8.engine == "torch"
    assert "no readable calibration cells" in caplog.text


def test_unknown_engine_is_refused():
    with pytest.raises(ValueError, match="torch, onnx, onnx-int8"):
        check_engine("openvino")


def test_cli_scores_with_the_onnx_engine(tmp_path):
    checkpoint = checkpoint_of("resnet18", 32, "none", temperature=1.0)
    path = save_checkpoint(checkpoint, tmp_path / "c.pt")
    folder = tmp_path / "cells"
    folder.mkdir()
    for p in cells(1):
        (folder / p.name).write_bytes(p.read_bytes())
    args = get_args_parser().parse_args(
        [
            "--checkpoint",
            str(path),
            "--images",
            str(folder),
            "--engine",
            "onnx",
            "--onnx-dir",
            str(tmp_path / "onnx"),
            "--json",
            str(tmp_path / "out.json"),
        ]
    )
    scores = main(args)
    assert len(scores) == len(CODES) and all(s.error is None for s in scores)
    assert '"engine": "onnx"' in (tmp_path / "out.json").read_text()
    assert len(list((tmp_path / "onnx").glob("*.fp32.onnx"))) == 1
    no_calibration = get_args_parser().parse_args(
        ["--checkpoint", str(path), "--images", str(folder), "--engine", "onnx-int8"]
    )
    with pytest.raises(SystemExit, match="needs --calibration"):
        main(no_calibration)


# --- int8 on a trained model: the demo model and its held-out PBC cells ---------------


def demo_splits(work: Path) -> tuple[list[Sample], list[Sample]]:
    """The demo model's validation and held-out test splits, recomputed exactly as
    scripts/make_demo_model.py recomputes its test split."""
    from mlworker.train import cli
    from mlworker.train.config import config_from_namespace
    from mlworker.train.splits import cap_per_class, deduplicate, split_train_val_test
    from scripts.make_demo_model import DEMO_RECIPE, demo_cell_hashes, write_training_manifest

    data_dir, _ = write_training_manifest(PBC, work, demo_cell_hashes())
    recipe: argparse.Namespace = cli.get_args_parser().parse_args(
        ["--data", str(data_dir), "--out", str(work), *DEMO_RECIPE]
    )
    config = config_from_namespace(recipe)
    samples, _, _ = cli.load_data([data_dir])
    capped = cap_per_class(deduplicate(samples).kept, config.class_cap, config.seed)
    _, val, test = split_train_val_test(
        capped, config.val_fraction, config.test_fraction, config.seed
    )
    return val, test


def balanced(samples: list[Sample], probabilities: np.ndarray) -> float:
    labels = np.array([s.label for s in samples])
    confusion = confusion_matrix(labels, probabilities.argmax(1))
    return float(classification_metrics(confusion)["balanced_accuracy"])


@pytest.mark.slow
def test_int8_that_changes_answers_is_refused_on_the_demo_model(tmp_path, caplog):
    """#20's bar for int8: top-1 agreement >= 99.5 % and balanced accuracy within 0.5
    points on held-out cells. Statically quantised EfficientNet-Lite0 (the demo model,
    depthwise convolutions) misses it: measured on the 522 held-out test cells it agrees
    on about 95 %. The engine finds that out on its calibration cells (validation cells,
    never the test cells) and scores with the fp32 graph instead, saying so; fp32 ONNX is
    within 1e-3 of torch on the held-out cells."""
    checkpoint = load_demo_checkpoint()
    val, test = demo_splits(tmp_path / "demo")
    assert len(test) == checkpoint["metrics"]["data"]["test"]
    calibration = val[:: max(1, len(val) // 128)][:128]
    check = [s for s in val if s not in calibration][:256]  # validation cells, not calibrated on
    reference = Scorer(checkpoint, runtime=CPU).score(test)
    int8 = Scorer(
        checkpoint,
        runtime=CPU,
        engine="onnx-int8",
        onnx_dir=tmp_path,
        calibration=calibration,
        check=check,
    )
    assert int8.engine_requested == "onnx-int8"
    assert int8.engine == "onnx", "int8 kept although it disagrees with fp32"
    assert "scoring with onnx fp32" in caplog.text
    verdict = json.loads(next(tmp_path.glob("*.int8-*.check-*.json")).read_text())
    assert int8.onnx is not None and int8.onnx.int8_verdict == verdict
    assert verdict["n"] == len(check) and verdict["agreement"] < INT8_MIN_AGREEMENT
    # the refused int8 file, measured on the held-out cells as the issue asks
    quantised = next(tmp_path.glob("*.int8-*.onnx"))
    session = OnnxModel(quantised, engine="onnx-int8")
    pixels = torch.stack(
        [Scorer(checkpoint, runtime=CPU)._cpu_transform(decode_file(s.path)) for s in test]
    )
    p_int8 = np.concatenate([session.run(b).probabilities for b in pixels.split(64)])
    p_ref = np.stack([s.probabilities for s in reference])
    p_got = np.stack([s.probabilities for s in int8.score(test)])
    agreement = float((p_int8.argmax(1) == p_ref.argmax(1)).mean())
    print(
        f"demo held-out n={len(test)}: int8 agreement {agreement:.4f} (check cells "
        f"{verdict['agreement']:.4f}), balanced {balanced(test, p_ref):.4f} -> "
        f"{balanced(test, p_int8):.4f}; served fp32 max diff {np.abs(p_got - p_ref).max():.2e}"
    )
    assert agreement < 0.995  # the refusal was right on cells it never saw
    assert np.abs(p_got - p_ref).max() <= FP32_TOLERANCE


def test_int8_is_served_only_above_the_agreement_bar(tmp_path, monkeypatch, caplog):
    checkpoint = checkpoint_of("resnet18", 32, "none", temperature=1.0)
    images = cells(2)
    monkeypatch.setattr(onnx_engine, "INT8_MIN_AGREEMENT", 0.0)
    kept = Scorer(
        checkpoint, runtime=CPU, engine="onnx-int8", onnx_dir=tmp_path, calibration=images
    )
    assert kept.engine == "onnx-int8" and kept.onnx is not None
    assert kept.onnx.path.name.endswith(".onnx") and ".int8-" in kept.onnx.path.name
    # the verdict is kept beside the file: a restarted worker does not quantise again
    verdict = next(tmp_path.glob("*.int8-*.json"))
    stamp = verdict.stat().st_mtime_ns
    monkeypatch.setattr(onnx_engine, "INT8_MIN_AGREEMENT", 1.01)
    refused = Scorer(
        checkpoint, runtime=CPU, engine="onnx-int8", onnx_dir=tmp_path, calibration=images
    )
    assert refused.engine == "onnx" and verdict.stat().st_mtime_ns == stamp
    assert "needs 101.0 %" in caplog.text
    # cells kept apart from the calibration judge it when given: a verdict of their own
    apart = cells(3, skip=10)
    judged = Scorer(checkpoint, runtime=CPU, engine="onnx-int8", onnx_dir=tmp_path,
                    calibration=images, check=apart)  # fmt: skip
    assert judged.onnx is not None and judged.onnx.int8_verdict is not None
    assert judged.onnx.int8_verdict["n"] == len(apart)
    assert len(list(tmp_path.glob("*.int8-*.check-*.json"))) == 2
    assert len(list(tmp_path.glob("*.int8-*.onnx"))) == 1  # quantised once


def test_onnx_threads_follow_the_setting(tmp_path):
    checkpoint = checkpoint_of("resnet18", 32, "none", temperature=1.0)
    one = Scorer(checkpoint, runtime=CPU, engine="onnx", onnx_dir=tmp_path, onnx_threads=1)
    assert one.onnx is not None and one.onnx.threads == 1
    auto = Scorer(checkpoint, runtime=CPU, engine="onnx", onnx_dir=tmp_path)
    assert auto.onnx is not None and auto.onnx.threads == len(os.sched_getaffinity(0))
