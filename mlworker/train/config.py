"""Training hyperparameters: one flag each, with a default and help text.

The defaults are the reference paper's protocol (ResNet-152 from ImageNet weights, 224 px,
mini-batch 32, at most 2,500 images per class, 7:3 stratified split, 10 epochs of the
head alone, 40 epochs of the last residual stage and the head, learning rate divided by
10 every 10 epochs, then a weak-class pass). ``parse_train_config(argv,
init_checkpoint=ckpt)`` changes them for the product's retraining from an active version:
arch and image size come from the checkpoint, stage 1 is skipped (the head is trained
already) and stage 2 retrains the last stage (scope ``layer4``: a ResNet's ``layer4``, an
EfficientNet-Lite's stride-32 blocks and head convolution) and the head, as the paper's
last step does.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, fields
from typing import Any, NoReturn

from mlworker.device import PRECISIONS
from mlworker.model import ARCHS, DEFAULT_ARCH, Checkpoint, checkpoint_crop, checkpoint_tta
from mlworker.presets import DEFAULT_CROP, DEFAULT_INPUT_SIZE, DEFAULT_TTA, TTA_MODES, check_crop

SCOPES: tuple[str, ...] = ("layer4", "all")
BALANCE: tuple[str, ...] = ("sampler", "loss", "none")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")
SCHEDULES: tuple[str, ...] = ("step", "cosine")


@dataclass
class TrainConfig:
    """Every hyperparameter of a run (the parsed flags, minus ``--data``/``--out``)."""

    arch: str = DEFAULT_ARCH
    weights: str = "imagenet"
    image_size: int = DEFAULT_INPUT_SIZE
    crop: float = DEFAULT_CROP
    low_res_size: int | None = None
    low_res_epochs: int = 0
    tta: str = DEFAULT_TTA
    batch_size: int = 32
    class_cap: int = 2500
    val_fraction: float = 0.3
    test_fraction: float = 0.0
    epochs_head: int = 10
    epochs_finetune: int = 40
    finetune_scope: str = "layer4"
    epochs_weak: int = 10
    weak_threshold: float = 0.9
    weak_oversample: float = 4.0
    weak_scope: str = "layer4"
    optimizer: str = "sgd"
    lr: float = 0.01
    lr_weak: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_schedule: str = "step"
    lr_step: int = 10
    lr_gamma: float = 0.1
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    ema_decay: float = 0.0
    balance: str = "sampler"
    balance_power: float = 1.0
    balance_sources: bool = False
    hflip_prob: float = 0.5
    vflip_prob: float = 0.5
    rotate90: bool = True
    color_jitter: float = 0.1
    stain_jitter: float = 0.0
    calibrate: bool = True
    init_from_checkpoint: bool = True
    cached_trunk: bool = False
    adapt_bn: bool = False
    tail_stages: int = 1
    trunk_cache: str | None = None
    seed: int = 0
    device: str | None = None
    precision: str = "auto"
    threads: int | None = None
    workers: int | None = None
    cache_mb: int = 2048
    val_every: int = 1
    progress_every_s: float = 30.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {value}")
    return value


def _test_fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, got {value}")
    return value


def _ema_decay(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1) (0 disables), got {value}")
    return value


def _crop(text: str) -> float:
    try:
        return check_crop(float(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The hyperparameter flags; defaults come from ``TrainConfig``."""
    d = TrainConfig()
    model = parser.add_argument_group("model")
    model.add_argument(
        "--arch",
        default=d.arch,
        choices=ARCHS,
        help="backbone: a ResNet depth, or an EfficientNet-Lite size (ImageNet weights "
        "installed with its packages, so --weights imagenet works offline)",
    )
    model.add_argument(
        "--weights",
        default=d.weights,
        help="backbone start: 'imagenet' (EfficientNet-Lite: installed, offline; ResNet: "
        "torchvision's cache or a download, failing clearly offline), 'none' (random "
        "initialisation) or the path of a weights file / WBC checkpoint of the same family",
    )
    model.add_argument(
        "--image-size",
        type=_positive_int,
        default=d.image_size,
        help="square input size in pixels (the whole crop is resized)",
    )
    model.add_argument(
        "--crop",
        type=_crop,
        default=d.crop,
        help="keep the central square of this share of the shorter side before resizing "
        "(the cell is near the centre: 0.6 gives it 2.8x the pixels); 1 keeps the whole "
        "image. Recorded in the checkpoint, so scoring crops the same way",
    )
    model.add_argument(
        "--low-res-size",
        type=_positive_int,
        default=d.low_res_size,
        help="progressive resizing: the first --low-res-epochs of stage 2 train on the "
        "images resized to this size (cheaper epochs; validation stays at --image-size)",
    )
    model.add_argument(
        "--low-res-epochs",
        type=_non_negative_int,
        default=d.low_res_epochs,
        help="stage-2 epochs trained at --low-res-size (needs --low-res-size)",
    )
    model.add_argument(
        "--tta",
        default=d.tta,
        choices=TTA_MODES,
        help="test-time augmentation: logits averaged over 'flips' (4 views) or all 8 "
        "'dihedral' symmetries of the image, for the final calibration and evaluation. "
        "Recorded in the checkpoint, so scoring averages the same views (at 4x / 8x the "
        "model compute per image)",
    )

    data = parser.add_argument_group("data")
    data.add_argument(
        "--class-cap",
        type=_positive_int,
        default=d.class_cap,
        help="at most this many images per class (random, seeded)",
    )
    data.add_argument(
        "--val-fraction",
        type=_fraction,
        default=d.val_fraction,
        help="validation share, stratified by class (by patient when known); every decision "
        "(early stopping, weight average, weak pass) is taken on it",
    )
    data.add_argument(
        "--test-fraction",
        type=_test_fraction,
        default=d.test_fraction,
        help="test share, held out first and by patient (0: none): never used for a decision, "
        "only reported in metrics.json beside the validation figures",
    )
    data.add_argument(
        "--balance",
        default=d.balance,
        choices=BALANCE,
        help="keep rare classes learnt: weighted 'sampler', class-weighted 'loss', or 'none'",
    )
    data.add_argument(
        "--balance-power",
        type=float,
        default=d.balance_power,
        help="class weight = n_class^-power (1: fully balanced, 0.5: square root)",
    )
    data.add_argument(
        "--balance-sources",
        action="store_true",
        help="with --balance sampler: within each class, every --data source weighs "
        "the same (a hospital's few eosinophils count as much as another's many)",
    )
    data.add_argument("--hflip-prob", type=float, default=d.hflip_prob, help="horizontal flip")
    data.add_argument("--vflip-prob", type=float, default=d.vflip_prob, help="vertical flip")
    data.add_argument(
        "--no-rotate90",
        dest="rotate90",
        action="store_false",
        help="no random rotations by multiples of 90 degrees",
    )
    data.add_argument(
        "--color-jitter",
        type=float,
        default=d.color_jitter,
        help="brightness/contrast/saturation jitter (hue a quarter of it) for "
        "stain and scanner variation; 0 disables",
    )

    data.add_argument(
        "--stain-jitter",
        type=float,
        default=d.stain_jitter,
        help="HED stain augmentation: each stain's optical density scaled by 1 +- this "
        "and shifted by +- this (0.05 light, 0.2 strong); 0 disables",
    )

    stages = parser.add_argument_group("stages")
    stages.add_argument(
        "--batch-size", type=_positive_int, default=d.batch_size, help="images per mini-batch"
    )
    stages.add_argument(
        "--epochs-head",
        type=_non_negative_int,
        default=d.epochs_head,
        help="stage 1: epochs training only the fully connected head",
    )
    stages.add_argument(
        "--epochs-finetune",
        type=_non_negative_int,
        default=d.epochs_finetune,
        help="stage 2: epochs training --finetune-scope",
    )
    stages.add_argument(
        "--finetune-scope",
        default=d.finetune_scope,
        choices=SCOPES,
        help="what stage 2 trains: 'layer4', the last stage (layer4 of a ResNet; the "
        "stride-32 blocks and head conv of an EfficientNet-Lite) + head, or 'all'",
    )
    stages.add_argument(
        "--epochs-weak",
        type=_non_negative_int,
        default=d.epochs_weak,
        help="weak-class pass epochs (0 skips it)",
    )
    stages.add_argument(
        "--weak-threshold",
        type=float,
        default=d.weak_threshold,
        help="a class with validation TPR below this is weak",
    )
    stages.add_argument(
        "--weak-oversample",
        type=float,
        default=d.weak_oversample,
        help="sampling weight multiplier for weak classes in the weak pass",
    )
    stages.add_argument(
        "--weak-scope",
        default=d.weak_scope,
        choices=SCOPES,
        help="what the weak pass retrains besides its fresh head: 'layer4', the last "
        "stage (layer4 of a ResNet; the stride-32 blocks and head conv of an "
        "EfficientNet-Lite), or 'all'",
    )
    stages.add_argument(
        "--no-calibrate",
        dest="calibrate",
        action="store_false",
        help="skip temperature scaling on the validation split",
    )
    stages.add_argument(
        "--cached-trunk",
        action=argparse.BooleanOptionalAction,
        default=d.cached_trunk,
        help="retraining: run the frozen trunk once per cell and view, cache what enters "
        "the last stage and retrain the last stage and head on it (--epochs-finetune "
        "epochs, no weak pass; mlworker/train/cached.py)",
    )
    stages.add_argument(
        "--tail-stages",
        type=_positive_int,
        default=d.tail_stages,
        help="cached-trunk retraining: how many of the backbone's last stages retrain with "
        "the head (1: the last stage, as --finetune-scope layer4; the trunk before them is "
        "cached)",
    )
    stages.add_argument(
        "--adapt-bn",
        action=argparse.BooleanOptionalAction,
        default=d.adapt_bn,
        help="cached-trunk retraining: re-estimate the trunk's BatchNorm statistics on the "
        "site's own cells first (AdaBN)",
    )
    stages.add_argument(
        "--from-scratch",
        dest="init_from_checkpoint",
        action="store_false",
        help="retraining: ignore the active version's weights",
    )

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--optimizer", default=d.optimizer, choices=OPTIMIZERS, help="optimizer")
    optim.add_argument("--lr", type=float, default=d.lr, help="learning rate, stages 1 and 2")
    optim.add_argument(
        "--lr-weak", type=float, default=d.lr_weak, help="learning rate of the weak-class pass"
    )
    optim.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    optim.add_argument("--weight-decay", type=float, default=d.weight_decay, help="weight decay")
    optim.add_argument(
        "--lr-schedule",
        default=d.lr_schedule,
        choices=SCHEDULES,
        help="'step': divide by 1/--lr-gamma every --lr-step epochs; "
        "'cosine': anneal to 0 over each stage",
    )
    optim.add_argument(
        "--lr-step",
        type=_positive_int,
        default=d.lr_step,
        help="epochs between learning-rate drops (step schedule)",
    )
    optim.add_argument(
        "--lr-gamma", type=float, default=d.lr_gamma, help="learning-rate factor at each drop"
    )
    optim.add_argument(
        "--warmup-epochs",
        type=_non_negative_int,
        default=d.warmup_epochs,
        help="linear warm-up epochs at the start of each stage",
    )
    optim.add_argument(
        "--label-smoothing",
        type=float,
        default=d.label_smoothing,
        help="cross-entropy label smoothing",
    )

    optim.add_argument(
        "--ema-decay",
        type=_ema_decay,
        default=d.ema_decay,
        help="per-step decay of an exponential moving average of the weights (BatchNorm "
        "statistics included), restarted at each stage; at a stage's end the average "
        "replaces the last weights when its validation balanced accuracy is not lower. "
        "1 - 1/(steps per epoch) spans about one epoch; 0 disables",
    )

    run = parser.add_argument_group("runtime")
    run.add_argument("--seed", type=int, default=d.seed, help="seed for split, sampling, init")
    run.add_argument("--device", default=d.device, help="cpu, cuda, cuda:1 (default: auto)")
    run.add_argument(
        "--precision",
        default=d.precision,
        choices=PRECISIONS,
        help="autocast: auto (bf16 on CUDA, fp32 on CPU), fp32 or bf16",
    )
    run.add_argument(
        "--threads",
        type=_positive_int,
        default=d.threads,
        help="CPU threads for compute (default: torch's choice)",
    )
    run.add_argument(
        "--workers",
        type=_non_negative_int,
        default=d.workers,
        help="image decoding workers (default: auto)",
    )
    run.add_argument(
        "--cache-mb",
        type=_non_negative_int,
        default=d.cache_mb,
        help="decode and resize every image once and keep it in memory when "
        "the set fits in this many MB (0: decode every epoch)",
    )
    run.add_argument(
        "--trunk-cache",
        default=d.trunk_cache,
        help="cached-trunk retraining: keep the trunk activations in this folder, under "
        "the trunk's fingerprint, for the next retrain (default: memory only)",
    )
    run.add_argument(
        "--val-every",
        type=_positive_int,
        default=d.val_every,
        help="validate every N epochs (and always at a stage's last epoch); a validation "
        "pass costs about 13 %% of a training epoch",
    )
    run.add_argument(
        "--progress-every-s",
        type=float,
        default=d.progress_every_s,
        help="progress reports (heartbeats) at least this often within an epoch",
    )
    return parser


def retraining_defaults(checkpoint: Checkpoint) -> dict[str, Any]:
    """Defaults when starting from a trained version: retrain the final layers."""
    return {
        "arch": checkpoint["arch"],
        "image_size": int(checkpoint["input_size"]),
        "crop": checkpoint_crop(checkpoint),  # the same view of the cell as before
        "tta": checkpoint_tta(checkpoint),
        "weights": "none",  # the backbone comes from the checkpoint itself
        "epochs_head": 0,
        # The final layers retrain on cached trunk activations (mlworker/train/cached.py):
        # seconds per epoch, so a retrain can follow every round of labels. Chosen with
        # benchmarks/bench_loop.py and the probes in docs/benchmarks.md ("learning loop").
        "cached_trunk": True,
        "epochs_finetune": 20,
        "finetune_scope": "layer4",
        "epochs_weak": 0,
        "lr": 0.003,
    }


class _RaisingParser(argparse.ArgumentParser):
    """A bad flag in a job's arguments must fail the job, not exit the worker process."""

    def error(self, message: str) -> NoReturn:
        raise ValueError(f"training arguments: {message}")


def parse_train_config(
    argv: list[str], *, init_checkpoint: Checkpoint | None = None
) -> TrainConfig:
    """Parse hyperparameter flags (no ``--data``/``--out``) into a ``TrainConfig``.

    Raises ``ValueError`` (never ``SystemExit``) for an unknown flag or a bad value.
    """
    parser = add_train_arguments(
        _RaisingParser(prog="mlworker.train", description="retraining flags", add_help=False)
    )
    if init_checkpoint is not None:
        parser.set_defaults(**retraining_defaults(init_checkpoint))
    return config_from_namespace(parser.parse_args(argv))


def config_from_namespace(args: argparse.Namespace) -> TrainConfig:
    config = TrainConfig.from_dict(vars(args))
    if config.val_fraction + config.test_fraction >= 1:
        raise ValueError("--val-fraction and --test-fraction leave nothing to train on")
    if config.low_res_epochs and config.low_res_size is None:
        raise ValueError("--low-res-epochs needs --low-res-size")
    return config
