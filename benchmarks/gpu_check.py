# ruff: noqa: E402  (imports follow the sys.path line that makes mlworker importable)
"""The GPU check (#20): one prepared run that says how fast this machine scores and trains.

    bash benchmarks/gpu_check.sh                 # on a GPU machine: the real figures, <= 8 min
    bash benchmarks/gpu_check.sh --smoke         # anywhere, seconds: the same code on tiny sizes

Prints one JSON object (and writes it to ``--json``, default ``$OUT/gpu_check.json`` when
``$OUT`` is set):

- ``scoring``: images/s end to end from JPEG bytes on disk for ResNet-152 at 224 px, for
  the plain loop (torchvision's model as it ships, PIL decode and transforms in the main
  thread, fp32, batch 64) and for the product's ``Scorer`` (nvJPEG decode on the device,
  batched resize, BatchNorm folded, channels_last, bf16 autocast), at each batch size of
  ``--batch-sizes`` (the best is reported: batch size chosen by measurement), and the same
  with ``torch.compile`` on the best batch size (CUDA only). All in the same run.
- ``training``: images/s for the paper's protocol (ResNet-152, 224 px, batch 32): stage 1
  trains the head on a frozen trunk, stage 2 fine-tunes layer4 and the head; the product's
  ``train_one_epoch`` with images decoded once and augmented per batch.

Weights are random (BatchNorm statistics as initialised): speed only, no accuracy. Without
a GPU the check runs in smoke mode whatever the flags (tiny sizes, no compile), so that
``make test`` exercises every line of it; the figures are then meaningless and say so.
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_scoring import pick_images, plain_loop, plain_model
from benchmarks.bench_training import pick_samples
from mlworker.device import choose_runtime
from mlworker.model import build_classifier, make_checkpoint
from mlworker.score import Scorer
from mlworker.train import TrainConfig
from mlworker.train.engine import batches_for_training, prepare_images, train_one_epoch
from mlworker.train.optim import make_optimizer, set_scope
from mlworker.train.progress import EpochMeter

GOAL_IMAGES_PER_S = 5000.0  # one H100, end to end (issue #20)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (forced without a GPU)")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "pbc"))
    parser.add_argument("--arch", default="resnet152")
    parser.add_argument("--n-images", type=int, default=1024, help="distinct JPEG files")
    parser.add_argument("--file-repeats", type=int, default=8, help="each file scored this often")
    parser.add_argument("--batch-sizes", default="128,256,512", help="Scorer batch sizes to try")
    parser.add_argument("--workers", type=int, default=8, help="Scorer reader workers")
    parser.add_argument("--plain-images", type=int, default=1024, help="images for the plain loop")
    parser.add_argument("--train-batches", type=int, default=40, help="timed batches per stage")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    parser.add_argument("--json", default=None, help="also write the JSON here")
    return parser


def smoke_settings(args: argparse.Namespace) -> None:
    args.n_images, args.file_repeats, args.batch_sizes = 8, 2, "4,8"
    args.workers, args.plain_images, args.train_batches = 0, 8, 2
    args.no_compile = True


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_scorer(scorer: Scorer, paths: list[Path], batch: int, workers: int) -> float:
    scorer.score(paths[: batch * 2], batch_size=batch, num_workers=workers)  # warm-up
    synchronize(scorer.runtime.device)
    started = time.perf_counter()
    scores = scorer.score(paths, batch_size=batch, num_workers=workers)
    synchronize(scorer.runtime.device)
    seconds = time.perf_counter() - started
    if any(s.error for s in scores):
        raise SystemExit(f"scoring failed: {next(s.error for s in scores if s.error)}")
    return len(scores) / seconds


def scoring(args: argparse.Namespace, device: torch.device, size: int) -> dict[str, Any]:
    distinct = pick_images(Path(args.data), args.n_images)
    paths = distinct * args.file_repeats
    model = build_classifier(args.arch).eval()
    checkpoint = make_checkpoint(model, arch=args.arch, input_size=size)

    plain = plain_model(args.arch, model).eval().to(device)
    plain_paths = paths[: args.plain_images]
    plain_loop(plain, plain_paths[:16], args.arch, size, device)  # warm-up
    synchronize(device)
    started = time.perf_counter()
    plain_loop(plain, plain_paths, args.arch, size, device)
    synchronize(device)
    plain_ips = len(plain_paths) / (time.perf_counter() - started)
    del plain

    precision = "bf16" if device.type == "cuda" else "fp32"
    scorer = Scorer(checkpoint, runtime=choose_runtime(device, precision))
    by_batch = {
        int(b): time_scorer(scorer, paths, int(b), args.workers)
        for b in args.batch_sizes.split(",")
    }
    best = max(by_batch, key=lambda b: by_batch[b])
    result: dict[str, Any] = {
        "arch": args.arch,
        "input_size": size,
        "images": len(paths),
        "distinct_files": len(distinct),
        "precision": precision,
        "plain_images_per_s": round(plain_ips, 1),
        "ours_images_per_s_by_batch": {str(b): round(v, 1) for b, v in by_batch.items()},
        "batch_size_chosen": best,
        "ours_images_per_s": round(by_batch[best], 1),
    }
    if args.no_compile or device.type != "cuda":
        result["compiled"] = "skipped" + (" (no GPU)" if device.type != "cuda" else "")
    else:
        started = time.perf_counter()
        scorer.model = torch.compile(scorer.model, mode="max-autotune-no-cudagraphs")  # type: ignore[assignment]
        compiled = time_scorer(scorer, paths, best, args.workers)
        result["compiled_images_per_s"] = round(compiled, 1)
        result["compile_and_run_s"] = round(time.perf_counter() - started, 1)
    fastest = max(result["ours_images_per_s"], result.get("compiled_images_per_s", 0.0))
    result["best_images_per_s"] = fastest
    result["vs_plain"] = round(fastest / plain_ips, 2)
    return result


def training(args: argparse.Namespace, device: torch.device, size: int) -> dict[str, Any]:
    precision = "bf16" if device.type == "cuda" else "fp32"
    config = TrainConfig(
        arch=args.arch,
        weights="none",
        image_size=size,
        batch_size=32,
        precision=precision,
        workers=min(8, os.cpu_count() or 1) if device.type == "cuda" else 0,
    )
    n = max(64, args.train_batches * config.batch_size) if not args.smoke else 16
    samples = pick_samples([Path(args.data)], n)
    prepared = prepare_images(samples, config)
    runtime = choose_runtime(device, precision)
    model = runtime.prepare_model(build_classifier(args.arch))
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    generator = torch.Generator().manual_seed(0)
    out: dict[str, Any] = {"arch": args.arch, "input_size": size, "batch_size": 32}
    for stage, scope in (("stage1_head", "head"), ("stage2_layer4", "layer4")):
        optimizer = make_optimizer(set_scope(model, scope), config, lr=1e-3)  # type: ignore[arg-type]
        seconds = images = 0.0
        for timed in (False, True):  # the first pass warms up (kernels, allocator)
            batches = args.train_batches if timed else 2
            order = torch.randint(0, len(prepared.labels), (batches * 32,), generator=generator)
            synchronize(device)
            started = time.perf_counter()
            stats = train_one_epoch(
                model,  # type: ignore[arg-type]
                criterion,
                optimizer,
                batches_for_training(prepared, order, config, generator, set()),
                runtime,
                EpochMeter(batches),
                scope=scope,
            )
            synchronize(device)
            if timed:
                seconds, images = time.perf_counter() - started, stats.n
        out[f"{stage}_images_per_s"] = round(images / seconds, 1)
    return out


def main(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    smoke = args.smoke or not cuda
    if smoke:
        smoke_settings(args)
    size = 224 if not smoke else 32
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    report: dict[str, Any] = {
        "check": "gpu_check",
        "smoke": smoke,
        "note": "smoke mode: tiny sizes, figures mean nothing" if smoke else "",
        "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    report["scoring"] = scoring(args, device, size)
    report["training"] = training(args, device, size)
    best = report["scoring"]["best_images_per_s"]
    report["goal"] = {
        "scoring_images_per_s": GOAL_IMAGES_PER_S,
        "met": (not smoke) and best >= GOAL_IMAGES_PER_S,
    }
    report["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=1)
    print(text)
    target = args.json or (
        str(Path(os.environ["OUT"]) / "gpu_check.json") if "OUT" in os.environ else None
    )
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(text + "\n")
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
