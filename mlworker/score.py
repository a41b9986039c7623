"""Batch scoring: calibrated class probabilities, uncertainty and pooled features.

Data path (see mlworker/classifier.md):
- CPU: DataLoader workers read and decode JPEGs (libjpeg-turbo) and resize while the main
  process runs the previous batch, so decoding overlaps with compute.
- CUDA: workers only read file bytes; the batch is decoded on the GPU with
  ``torchvision.io.decode_jpeg(..., device="cuda")`` (nvJPEG), resized and normalised
  there, so the CPU is not the bottleneck.
- Normalised with the checkpoint's own input scaling (``preset_from_checkpoint``: ImageNet
  mean/std for ResNets, ``(x - 127) / 128`` for EfficientNet-Lite), as training did.
- BatchNorm folded into the convolutions (both families); model in channels_last (also
  on CPU: EfficientNet-Lite0's depthwise convolutions ran about a fifth faster so), under
  ``torch.inference_mode()``; bf16 autocast on CUDA, fp32 on CPU unless
  ``precision="bf16"`` is asked for (see mlworker/device.py).

Engines (``engine=``, ``mlworker.onnx_engine.ENGINES``): ``torch`` (the reference path
above, any device) or, for a worker without a GPU, ``onnx`` / ``onnx-int8``: the same
model, input scaling, TTA and temperature exported to one ONNX graph and run with ONNX
Runtime (see mlworker/onnx_engine.py and docs/cpu-scoring.md). Decoding and resizing are
shared; only the forward pass differs. An ONNX engine that cannot be prepared (export,
quantisation or session fails) is logged and the scorer stays on torch: ``engine`` says
what a scorer actually runs.

An unreadable image yields an ``ImageScore`` with ``error`` set; the rest of its batch
is scored. CLI: ``python -m mlworker.score --checkpoint CKPT --images DIR [--json OUT]
[--engine onnx]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from mlworker.calibration import softmax_with_temperature
from mlworker.data import (
    CellBatch,
    CellImages,
    Sample,
    collate_cells,
    describe_error,
    list_images,
)
from mlworker.device import PRECISIONS, Runtime, choose_runtime, inference
from mlworker.model import (
    Checkpoint,
    fuse_batchnorm,
    load_checkpoint,
    model_from_checkpoint,
    preset_from_checkpoint,
)
from mlworker.onnx_engine import (
    DEFAULT_ENGINE,
    ENGINES,
    OnnxEngineError,
    OnnxModel,
    check_engine,
    prepare_onnx,
)
from mlworker.presets import to_uint8_tensor, tta_views

logger = logging.getLogger(__name__)

ImageInput = str | Path | Sample | torch.Tensor


@dataclass
class ImageScore:
    """The model's view of one image. On error, only ``source`` and ``error`` are set."""

    source: str
    error: str | None = None
    probabilities: np.ndarray | None = None  # (num_classes,), calibrated
    logits: np.ndarray | None = None  # (num_classes,), before temperature
    features: np.ndarray | None = None  # pooled: 2,048-d ResNet-152, 1,280-d EfficientNet-Lite
    top_class: str | None = None
    max_probability: float | None = None
    margin: float | None = None  # top-1 minus top-2 probability
    entropy: float | None = None  # in nats; log(num_classes) is maximal uncertainty

    def as_dict(self, codes: Sequence[str], with_features: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "error": self.error}
        if self.error is None:
            assert self.probabilities is not None
            out |= {
                "top_class": self.top_class,
                "max_probability": self.max_probability,
                "margin": self.margin,
                "entropy": self.entropy,
                "probabilities": {
                    c: float(p) for c, p in zip(codes, self.probabilities, strict=True)
                },
            }
            if with_features and self.features is not None:
                out["features"] = self.features.tolist()
        return out


def default_workers() -> int:
    """Decode workers: leave most cores to compute on CPU, more on a GPU machine."""
    cores = os.cpu_count() or 1
    return max(1, min(8, cores // 2)) if torch.cuda.is_available() else max(1, cores // 4)


def default_onnx_dir() -> Path:
    """Where the CLI keeps exported ONNX files: ``$XDG_CACHE_HOME/wbc-portal/onnx``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "wbc-portal" / "onnx"


class Scorer:
    """A loaded model ready to score; keep one per worker process and reuse it.

    ``engine``: "torch" (the reference), "onnx" or "onnx-int8" (CPU; exported into
    ``onnx_dir`` on first use, int8 calibrated on ``calibration`` and checked against fp32
    on ``check`` (other cells; the calibration cells when not given): cell images as for
    ``score``). ``onnx_threads``: ONNX Runtime's intra-op threads (None: the cores this
    process may use).
    """

    def __init__(
        self,
        checkpoint: Checkpoint | str | Path,
        runtime: Runtime | None = None,
        decode_on_device: bool | None = None,
        *,
        engine: str = DEFAULT_ENGINE,
        onnx_dir: str | Path | None = None,
        calibration: Sequence[ImageInput] | None = None,
        onnx_threads: int | None = None,
        check: Sequence[ImageInput] | None = None,
    ) -> None:
        ckpt = checkpoint if isinstance(checkpoint, Mapping) else load_checkpoint(checkpoint)
        self.engine_requested = check_engine(engine)
        self.codes: list[str] = list(ckpt["class_codes"])
        self.temperature = float(ckpt["temperature"])
        self.arch = ckpt["arch"]
        self.preset = preset_from_checkpoint(ckpt)
        self.onnx: OnnxModel | None = None
        if engine != "torch":
            self.onnx = self._prepare_onnx(ckpt, engine, onnx_dir, calibration, onnx_threads, check)
        # the ONNX engines run on the CPU: decoding there too (no nvJPEG round trip)
        self.runtime = runtime or choose_runtime("cpu" if self.onnx else None)
        self.model = self.runtime.prepare_model(fuse_batchnorm(model_from_checkpoint(ckpt)))
        self.decode_on_device = (
            self.runtime.is_cuda if decode_on_device is None else decode_on_device
        ) and self.onnx is None

    @property
    def engine(self) -> str:
        """The engine this scorer runs (the torch fallback when an ONNX one failed)."""
        return self.onnx.engine if self.onnx is not None else "torch"

    def _prepare_onnx(
        self,
        ckpt: Checkpoint,
        engine: str,
        onnx_dir: str | Path | None,
        calibration: Sequence[ImageInput] | None,
        threads: int | None,
        check: Sequence[ImageInput] | None = None,
    ) -> OnnxModel | None:
        cache = Path(onnx_dir) if onnx_dir is not None else default_onnx_dir()
        try:
            # fp32 needs a few real cells only, for the export's check against torch
            images = list(calibration or [])
            pixels = self._calibration_pixels(images if engine == "onnx-int8" else images[:16])
            if engine == "onnx-int8" and not pixels:
                raise OnnxEngineError("no readable calibration cells for int8")
            check_pixels = (
                self._calibration_pixels(list(check)) if check and engine == "onnx-int8" else None
            )
            model = prepare_onnx(
                ckpt, engine, cache, calibration=pixels, threads=threads, check=check_pixels
            )
        except (OnnxEngineError, OSError, ImportError) as exc:
            logger.warning(
                "scoring engine %s unavailable for %s, scoring with torch: %s",
                engine,
                self.arch,
                exc,
            )
            return None
        logger.info("scoring engine: %s", model.describe())
        return model

    def _calibration_pixels(self, images: Sequence[ImageInput]) -> list[torch.Tensor]:
        """Calibration images decoded and resized as scoring does (unreadable ones left
        out)."""
        dataset = CellImages(list(images), transform=self._cpu_transform)
        return [e["image"] for e in (dataset[i] for i in range(len(dataset))) if not e["error"]]

    def score(
        self,
        images: Sequence[ImageInput] | torch.Tensor,
        batch_size: int = 64,
        num_workers: int | None = None,
    ) -> list[ImageScore]:
        """Score paths, samples or decoded image tensors (uint8 or [0, 1] float, CHW)."""
        items = self._as_items(images)
        results: list[ImageScore | None] = [None] * len(items)
        for batch in self._batches(items, batch_size, num_workers):
            for index, error in (batch.errors or {}).items():
                results[index] = ImageScore(source=_source(items[index], index), error=error)
            if not batch.indices:
                continue
            assert batch.images is not None
            for index, score in zip(batch.indices, self._score_batch(batch.images), strict=True):
                score.source = _source(items[index], index)
                results[index] = score
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    @staticmethod
    def _as_items(images: Sequence[ImageInput] | torch.Tensor) -> list[ImageInput]:
        if isinstance(images, torch.Tensor):
            if images.dim() == 3:
                return [images]
            if images.dim() == 4:
                return list(images.unbind(0))
            raise ValueError(f"expected CHW or NCHW image tensor, got {tuple(images.shape)}")
        return list(images)

    def _batches(
        self, items: list[ImageInput], batch_size: int, num_workers: int | None
    ) -> Iterator[CellBatch]:
        from_files = any(not isinstance(i, torch.Tensor) for i in items)
        # device-side decoding needs every item as file bytes; mixed inputs decode on CPU
        raw = self.decode_on_device and not any(isinstance(i, torch.Tensor) for i in items)
        dataset = CellImages(items, transform=None if raw else self._cpu_transform, raw_bytes=raw)
        if num_workers is None:
            num_workers = default_workers() if from_files and len(items) > batch_size else 0
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=collate_cells,
            pin_memory=self.runtime.is_cuda and not raw,
            prefetch_factor=2 if num_workers else None,
        )
        for batch in loader:
            if raw:
                batch = self._decode_on_device(batch)
            yield batch

    def _cpu_transform(self, image: torch.Tensor) -> torch.Tensor:
        return self.preset.resize(to_uint8_tensor(image))  # uint8: 4x less to move

    def _decode_on_device(self, batch: CellBatch) -> CellBatch:
        """Decode the batch's JPEG bytes on the runtime device, image by image on failure."""
        assert batch.data is not None
        device = self.runtime.device
        errors = dict(batch.errors or {})
        try:
            decoded = decode_jpeg(batch.data, mode=ImageReadMode.RGB, device=device)
            kept = list(zip(batch.indices, decoded, strict=True))
        except Exception:  # one bad file fails the whole batched call: isolate it
            kept = []
            for index, data in zip(batch.indices, batch.data, strict=True):
                try:
                    kept.append((index, _decode_one(data, device)))
                except Exception as exc:
                    errors[index] = describe_error(exc)
        decoded_images = [image for _, image in kept]
        if decoded_images and all(i.shape == decoded_images[0].shape for i in decoded_images):
            # analyser crops all share one size: one batched resize instead of N small ones
            images = list(self.preset.resize(torch.stack(decoded_images)).unbind(0))
        else:
            images = [self.preset.resize(image) for image in decoded_images]
        label_of = dict(zip(batch.indices, batch.labels.tolist(), strict=True))
        return CellBatch(
            indices=[i for i, _ in kept],
            labels=torch.tensor([label_of[i] for i, _ in kept], dtype=torch.long),
            images=torch.stack(images) if images else None,
            errors=errors,
        )

    def _forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """uint8 (N, 3, S, S) -> pooled features, logits, calibrated probabilities."""
        if self.onnx is not None:
            out = self.onnx.run(images)
            return (
                torch.from_numpy(out.features),
                torch.from_numpy(out.logits),
                torch.from_numpy(out.probabilities),
            )
        x = self.preset.normalize(self.runtime.prepare_batch(images))
        with inference(self.runtime):
            # the checkpoint's test-time augmentation: features and logits averaged over views
            outputs = [
                self.model.forward_with_features(view)  # type: ignore[operator]
                for view in tta_views(x, self.preset.tta)
            ]
            features = torch.stack([f.float() for f, _ in outputs]).mean(0)
            logits = torch.stack([out.float() for _, out in outputs]).mean(0)
            return features, logits, softmax_with_temperature(logits, self.temperature)

    def _score_batch(self, images: torch.Tensor) -> list[ImageScore]:
        features, logits, probs = self._forward(images)
        with torch.inference_mode():
            top2 = probs.topk(2, dim=1)
            entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=1)
        out = {
            "features": features.float().cpu().numpy(),
            "logits": logits.cpu().numpy(),
            "probs": probs.cpu().numpy(),
            "top_p": top2.values.cpu().numpy(),
            "top_i": top2.indices.cpu().numpy(),
            "entropy": entropy.cpu().numpy(),
        }
        return [
            ImageScore(
                source="",
                probabilities=out["probs"][k],
                logits=out["logits"][k],
                features=out["features"][k],
                top_class=self.codes[int(out["top_i"][k, 0])],
                max_probability=float(out["top_p"][k, 0]),
                margin=float(out["top_p"][k, 0] - out["top_p"][k, 1]),
                entropy=float(out["entropy"][k]),
            )
            for k in range(images.shape[0])
        ]


def _decode_one(data: torch.Tensor, device: torch.device) -> torch.Tensor:
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return decode_image(data, mode=ImageReadMode.RGB).to(device)  # PNG, BMP, ...


def _source(item: ImageInput, index: int) -> str:
    if isinstance(item, Sample):
        return str(item.path)
    if isinstance(item, torch.Tensor):
        return f"tensor[{index}]"
    return str(item)


def score_images(
    checkpoint: Checkpoint | str | Path,
    images: Sequence[ImageInput] | torch.Tensor,
    batch_size: int = 64,
    num_workers: int | None = None,
    runtime: Runtime | None = None,
) -> list[ImageScore]:
    """One-shot scoring; for repeated calls build a ``Scorer`` once and reuse it."""
    return Scorer(checkpoint, runtime=runtime).score(images, batch_size, num_workers)


@dataclass(frozen=True)
class LabelledScores:
    """The readable images of a labelled set, stacked in input order; what evaluation and
    calibration need. Unreadable images are left out of the arrays and listed instead."""

    labels: np.ndarray  # (N,) int64 class indices
    probabilities: np.ndarray  # (N, C) float64, calibrated
    logits: np.ndarray  # (N, C) float32, before temperature
    unreadable: list[tuple[str, str]]  # (source, error) of each image left out


def score_labelled(
    scorer: Scorer,
    samples: Sequence[Sample],
    *,
    batch_size: int = 64,
    num_workers: int | None = None,
) -> LabelledScores:
    """Score labelled ``samples`` and stack the readable ones with their labels."""
    scores = scorer.score(list(samples), batch_size=batch_size, num_workers=num_workers)
    readable = [(s, m) for s, m in zip(scores, samples, strict=True) if s.error is None]
    shape = (len(readable), len(scorer.codes))
    probabilities = np.zeros(shape, dtype=np.float64)
    logits = np.zeros(shape, dtype=np.float32)
    for row, (score, _) in enumerate(readable):
        probabilities[row] = score.probabilities
        logits[row] = score.logits
    return LabelledScores(
        labels=np.array([m.label for _, m in readable], dtype=np.int64),
        probabilities=probabilities,
        logits=logits,
        unreadable=[(s.source, s.error) for s in scores if s.error is not None],
    )


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Score cell images with a WBC classifier")
    parser.add_argument("--checkpoint", required=True, help="classifier checkpoint (.pt)")
    parser.add_argument("--images", required=True, help="image file or folder (recursive)")
    parser.add_argument("--json", default=None, help="write per-image results to this file")
    parser.add_argument("--features", action="store_true", help="include feature vectors")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch")
    parser.add_argument("--workers", type=int, default=None, help="decode workers (auto)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: auto)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help="autocast")
    parser.add_argument(
        "--engine", default=DEFAULT_ENGINE, choices=ENGINES, help="torch, or ONNX Runtime (CPU)"
    )
    parser.add_argument(
        "--onnx-dir", default=None, help=f"ONNX export cache (default {default_onnx_dir()})"
    )
    parser.add_argument(
        "--calibration", default=None, help="cell images (folder) to calibrate onnx-int8 on"
    )
    parser.add_argument("--onnx-threads", type=int, default=None, help="ONNX Runtime threads")
    return parser


def main(args: argparse.Namespace) -> list[ImageScore]:
    paths = list_images(args.images)
    if args.engine == "onnx-int8" and not args.calibration:
        raise SystemExit("--engine onnx-int8 needs --calibration (a folder of cell images)")
    scorer = Scorer(
        args.checkpoint,
        runtime=choose_runtime(args.device, args.precision),
        engine=args.engine,
        onnx_dir=args.onnx_dir,
        calibration=list_images(args.calibration) if args.calibration else None,
        onnx_threads=args.onnx_threads,
    )
    scores = scorer.score(paths, batch_size=args.batch_size, num_workers=args.workers)
    failed = sum(s.error is not None for s in scores)
    if args.json:
        payload = {
            "checkpoint": str(args.checkpoint),
            "arch": scorer.arch,
            "engine": scorer.engine,
            "temperature": scorer.temperature,
            "class_codes": scorer.codes,
            "results": [s.as_dict(scorer.codes, args.features) for s in scores],
        }
        Path(args.json).write_text(json.dumps(payload, indent=1))
    else:
        for s in scores:
            if s.error is None:
                print(f"{s.source}\t{s.top_class}\t{s.max_probability:.3f}\t{s.margin:.3f}")
            else:
                print(f"{s.source}\tERROR\t{s.error}")
    logger.info("scored %d images, %d unreadable", len(scores) - failed, failed)
    return scores


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main(get_args_parser().parse_args())
