# ruff: noqa: E402  (imports follow the sys.path line that makes mlworker importable)
"""Training proxy: how fast `make train-cpu`'s recipe trains, our path vs the plain loop.

    .venv/bin/python benchmarks/bench_training.py                 # the train-cpu recipe
    .venv/bin/python benchmarks/bench_training.py --turns 1 --batches 2 --n-images 64  # smoke
    BENCH_PRECISION=bf16 .venv/bin/python benchmarks/bench_training.py  # our path in bf16

A full `make train-cpu` run takes up to 30 minutes, too long for `make bench`; this proxy
times a few training batches of the same recipe and projects the run's duration from them.

Our path is ``mlworker.train``'s: every image decoded, cropped and resized once
(``prepare_images``), then per batch only the augmentations (flips, 90 degree turns, colour
and stain jitter), drawn per image but computed for the whole batch at once
(``TrainPreset.augment_batch``), fp32, channels_last, two compute threads. The plain loop
is what one would write first: PIL decode and torchvision transforms of every image in
every batch in the main thread (no stain jitter: torchvision has none), fp32, NCHW, the
same two threads. Both train the same ResNet-18
from the same random initialisation on the same images; they are timed interleaved in
turns (plain, ours, then the next turn), because this machine's CPUs are shared.

Figure: projected minutes of `make train-cpu` from our images/s; goal <= 30 min (issue #5).
The projection counts ``--epoch-equivalents`` passes over the 4,260 training images at 96
px. The recipe (28 epochs at 64 px, then 10 at 96 px, both cores): a 64-px epoch took 0.57
of a 96-px one in the recipe's own run (median 29.1 s against 50.9 s; more than the
(64/96)^2 = 0.44 of the pixels), so 28 x 0.57 + 10 = 26.0 epochs; 3 validation passes over
1,856 images (8.5 s each: 0.5), the weight average's evaluation, the weak-class check and the
final evaluation and calibration with 4 flip views (43 s: 0.85): 27.4 in all, plus the
measured one-off decode. Baseline: the same projection
for the plain loop (which decodes every epoch, so it has no one-off part).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision import transforms

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mlworker.data import Sample, discover_samples
from mlworker.device import choose_runtime
from mlworker.model import build_classifier
from mlworker.presets import IMAGENET_MEAN, IMAGENET_STD
from mlworker.train import TrainConfig
from mlworker.train.engine import (
    PreparedImages,
    batches_for_training,
    prepare_images,
    train_one_epoch,
)
from mlworker.train.progress import EpochMeter

TRAIN_IMAGES, VAL_IMAGES = 4260, 1856  # make train-cpu's split (docs/benchmarks.md)
GOAL_MINUTES = 30.0


def pick_samples(roots: list[Path], n: int) -> list[Sample]:
    """n labelled images, spread over the sources and classes, in a fixed order."""
    queues = []
    for root in roots:
        by_class: dict[str, list[Sample]] = {}
        for sample in discover_samples(root):
            by_class.setdefault(sample.code or "", []).append(sample)
        queues += [sorted(s, key=lambda x: str(x.path)) for _, s in sorted(by_class.items())]
    picked: list[Sample] = []
    while len(picked) < n and any(queues):
        for queue in queues:
            if queue and len(picked) < n:
                picked.append(queue.pop(0))
    return picked


def recipe(args: argparse.Namespace) -> TrainConfig:
    """The train-cpu flags that matter for speed (see the Makefile)."""
    return TrainConfig(
        arch="resnet18",
        weights="none",
        image_size=args.image_size,
        crop=args.crop,
        batch_size=args.batch_size,
        optimizer="adamw",
        lr=0.002,
        weight_decay=0.05,
        label_smoothing=0.1,
        color_jitter=0.2,
        stain_jitter=0.1,
        threads=2,
        workers=1,
        precision=os.environ.get("BENCH_PRECISION", "fp32"),
    )


def plain_transform(config: TrainConfig) -> transforms.Compose:
    side = round(360 * config.crop)
    return transforms.Compose(
        [
            transforms.CenterCrop(side),
            transforms.Resize((config.image_size, config.image_size)),
            transforms.RandomHorizontalFlip(),
            transforms.RandomVerticalFlip(),
            transforms.ColorJitter(0.2, 0.2, 0.2, 0.05),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def time_plain(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    samples: list[Sample],
    config: TrainConfig,
    batches: int,
    generator: torch.Generator,
) -> tuple[float, int]:
    transform = plain_transform(config)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    model.train()
    started, seen = time.perf_counter(), 0
    for _ in range(batches):
        pick = torch.randint(0, len(samples), (config.batch_size,), generator=generator)
        chosen = [samples[i] for i in pick.tolist()]
        x = torch.stack([transform(Image.open(s.path).convert("RGB")) for s in chosen])
        y = torch.tensor([s.label for s in chosen])
        loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        seen += len(y)
    return time.perf_counter() - started, seen


def time_ours(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    prepared: PreparedImages,
    config: TrainConfig,
    batches: int,
    generator: torch.Generator,
) -> tuple[float, int]:
    runtime = choose_runtime("cpu", config.precision)
    n = batches * config.batch_size
    order = torch.randint(0, len(prepared.labels), (n,), generator=generator)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    started = time.perf_counter()
    stats = train_one_epoch(
        model,  # type: ignore[arg-type]
        criterion,
        optimizer,
        batches_for_training(prepared, order, config, generator, set()),
        runtime,
        EpochMeter(batches),
        scope="all",
    )
    return time.perf_counter() - started, stats.n


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    shared = REPO.parent / "shared" / "data"
    parser.add_argument(
        "--data", action="append", default=None, help="labelled folders (default pbc, deepapl)"
    )
    parser.add_argument("--n-images", type=int, default=512, help="distinct images to train on")
    parser.add_argument("--image-size", type=int, default=96, help="as make train-cpu")
    parser.add_argument("--crop", type=float, default=0.6, help="as make train-cpu")
    parser.add_argument("--batch-size", type=int, default=64, help="as make train-cpu")
    parser.add_argument("--batches", type=int, default=8, help="training batches per turn")
    parser.add_argument("--turns", type=int, default=2, help="interleaved turns per path")
    parser.add_argument(
        "--epoch-equivalents",
        type=float,
        default=27.4,
        help="passes over the training split a make train-cpu run costs (see the docstring)",
    )
    parser.add_argument("--json", default=None, help="write the results here")
    parser.set_defaults(shared=shared)
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    roots = [Path(d) for d in (args.data or [args.shared / "pbc", args.shared / "deepapl"])]
    config = recipe(args)
    torch.set_num_threads(config.threads or 1)
    samples = pick_samples(roots, args.n_images)
    started = time.perf_counter()
    prepared = prepare_images(samples, config)
    decode_per_image = (time.perf_counter() - started) / len(samples)

    paths: dict[str, dict[str, Any]] = {}
    for name in ("plain", "ours"):
        torch.manual_seed(0)
        model = build_classifier("resnet18", weights=None)
        if name == "ours":
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        paths[name] = {
            "model": model,
            "optimizer": torch.optim.AdamW(model.parameters(), lr=config.lr),
            "seconds": 0.0,
            "images": 0,
        }
    generator = torch.Generator().manual_seed(0)
    for turn in range(args.turns + 1):  # turn 0 warms up (oneDNN primitives, allocator)
        batches = args.batches if turn else 2
        plain, ours = paths["plain"], paths["ours"]
        timed = {
            "plain": time_plain(
                plain["model"], plain["optimizer"], samples, config, batches, generator
            ),
            "ours": time_ours(
                ours["model"], ours["optimizer"], prepared, config, batches, generator
            ),
        }
        for name, (seconds, seen) in timed.items():
            if turn:
                paths[name]["seconds"] += seconds
                paths[name]["images"] += seen

    report: dict[str, Any] = {"decode_ms_per_image": round(1000 * decode_per_image, 2)}
    for name, state in paths.items():
        ips = state["images"] / state["seconds"]
        decoded_once = decode_per_image * (TRAIN_IMAGES + VAL_IMAGES)
        one_off = decoded_once if name == "ours" else 0.0
        projected = one_off + args.epoch_equivalents * TRAIN_IMAGES / ips
        report[name] = {
            "images_per_s": round(ips, 1),
            "projected_minutes": round(projected / 60, 1),
        }
    report["machine"] = f"{torch.get_num_threads()} threads, Python {platform.python_version()}"
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    ours, plain = report["ours"]["projected_minutes"], report["plain"]["projected_minutes"]
    result = {
        "name": "training",
        "title": "training proxy (make train-cpu projected from timed batches)",
        "figure": ours,
        "unit": "min",
        "goal": f"≤ {GOAL_MINUTES:.0f} min",
        "met": ours <= GOAL_MINUTES,
        "baseline": plain,
        "ratio": round(plain / ours, 2) if ours else None,
        "command": "benchmarks/bench_training.py " + " ".join(sys.argv[1:]),
        "note": f"ResNet-18 {config.image_size} px, crop {config.crop}; "
        f"ours {report['ours']['images_per_s']} img/s (cached, batch-augmented, "
        f"{config.precision}, channels_last), "
        f"plain loop {report['plain']['images_per_s']} img/s (PIL every batch, fp32); "
        f"{args.turns}x{args.batches} batches of {config.batch_size} each, interleaved",
    }
    print("RESULT " + json.dumps(result), flush=True)
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
