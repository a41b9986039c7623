"""The CPU scoring engine: a checkpoint exported to ONNX and run with ONNX Runtime.

What is exported is the classifier *as scoring uses it* (``ScoringGraph``), not the bare
network: the graph takes the resized uint8 pixels ``(N, 3, S, S)`` that ``Scorer`` feeds
its model and does the rest itself, exactly as ``mlworker.score.Scorer`` does in torch:

- the checkpoint's input scaling (``mean``/``std`` on [0, 1] pixels, ``x / 255`` first);
- the checkpoint's test-time augmentation (``presets.tta_views``): the views are stacked
  on the batch axis, run in one call, and features and logits averaged over them;
- pooled features and logits, and ``softmax(logits / temperature)``.

So one ``session.run`` answers what ``Scorer._score_batch`` answers, and the torch path
stays the reference: every export is checked against it on the spot (``export_onnx``;
largest probability difference ``<= FP32_TOLERANCE``), and a file that disagrees is
not written.

Engines (``ENGINES``): ``torch`` (the reference, any device), ``onnx`` (fp32 graph) and
``onnx-int8``: the fp32 graph quantised statically with ONNX Runtime's
``quantize_static``: QDQ format, weights int8 per output channel, activations uint8 with
ranges calibrated (MinMax) on real cell images run through this same graph. Which
operators are quantised is ``INT8_OP_TYPES``: the convolutions and matrix products; the
input scaling, the average over views and the softmax stay fp32. An int8 file is served
only where its top-1 answers agree with the fp32 graph's on check cells (other cells than
the calibration's where the caller gives them; else the calibration cells) at least
``INT8_MIN_AGREEMENT`` of the time; otherwise the worker scores with fp32 and logs the
figure (the verdict is cached beside the file). EfficientNet-Lite0, the demo model,
misses the bar (about 95 %: static quantisation of its depthwise convolutions), so it
scores in fp32 whatever the setting.

Exports are derived files: ``prepare_onnx`` keeps them in a cache folder under a name made
of a hash of everything they depend on (weights, input size and scaling, TTA,
temperature, class list, opset, exporter version; for int8 also the calibration pixels
and the quantisation options), written atomically, so a worker that restarts reuses them
and two workers that race write the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mlworker.model import Checkpoint, WBCClassifier, fuse_batchnorm, model_from_checkpoint
from mlworker.presets import EvalPreset, tta_views

logger = logging.getLogger(__name__)

ENGINES: tuple[str, ...] = ("torch", "onnx", "onnx-int8")
DEFAULT_ENGINE = "torch"
EXPORT_FORMAT = "wbc-onnx/2"  # bump when ScoringGraph or the export options change
OPSET = 17
INPUT_NAME = "pixels"
OUTPUT_NAMES: tuple[str, str, str] = ("features", "logits", "probabilities")
FP32_TOLERANCE = 1e-3  # largest |p_onnx - p_torch| an fp32 export may show
INT8_OP_TYPES: tuple[str, ...] = ("Conv", "MatMul", "Gemm")
CALIBRATION_BATCH = 8  # images per calibration run (times the TTA views)
# int8 is used only where its top-1 answers agree with fp32's on the check cells at
# least this often (#20's bar); otherwise the worker scores with the fp32 graph.
INT8_MIN_AGREEMENT = 0.995


class OnnxEngineError(RuntimeError):
    """An export, a quantisation or a session that could not be made."""


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ValueError(f"scoring engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    return engine


def default_threads() -> int:
    """The cores this process may run on (its CPU affinity: a container's or taskset's
    share, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class ScoringGraph(nn.Module):
    """uint8 pixels (N, 3, S, S) -> (features, logits, probabilities), as ``Scorer`` scores.

    Same function as ``Scorer._score_batch``: the input scaling of ``preset``, the mean of
    features and logits over ``preset.tta``'s views, softmax at ``temperature``.
    """

    def __init__(self, model: WBCClassifier, preset: EvalPreset, temperature: float) -> None:
        super().__init__()
        self.model = model
        mean = torch.tensor(preset.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(preset.std, dtype=torch.float32).view(1, 3, 1, 1)
        # (x / 255 - mean) / std as one multiply-add
        self.register_buffer("scale", 1.0 / (255.0 * std))
        self.register_buffer("shift", -mean / std)
        self.scale: torch.Tensor
        self.shift: torch.Tensor
        self.tta = preset.tta
        self.temperature = float(temperature)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = pixels.to(torch.float32) * self.scale + self.shift
        views = tta_views(x, self.tta)
        batch = torch.cat(views) if len(views) > 1 else x
        features, logits = self.model.forward_with_features(batch)
        if len(views) > 1:
            features = features.reshape(len(views), -1, features.shape[-1]).mean(0)
            logits = logits.reshape(len(views), -1, logits.shape[-1]).mean(0)
        probabilities = torch.softmax(logits / self.temperature, dim=-1)
        return features, logits, probabilities


def scoring_graph(checkpoint: Checkpoint) -> ScoringGraph:
    """The checkpoint's model (BatchNorm folded, eval, fp32, CPU) wrapped for export."""
    from mlworker.model import preset_from_checkpoint

    model = fuse_batchnorm(model_from_checkpoint(checkpoint)).float().cpu()
    preset = preset_from_checkpoint(checkpoint)
    return ScoringGraph(model, preset, float(checkpoint["temperature"])).eval()


def _hash_update_tensor(digest: Any, tensor: torch.Tensor) -> None:
    t = tensor.detach().cpu().contiguous()
    digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
    digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def checkpoint_key(checkpoint: Checkpoint) -> str:
    """A hash of everything the exported graph depends on."""
    from mlworker.model import checkpoint_tta

    digest = hashlib.sha256()
    meta = {
        "format": EXPORT_FORMAT,
        "opset": OPSET,
        "torch": torch.__version__,
        "arch": checkpoint["arch"],
        "class_codes": list(checkpoint["class_codes"]),
        "input_size": checkpoint["input_size"],
        "mean": list(checkpoint["mean"]),
        "std": list(checkpoint["std"]),
        "temperature": float(checkpoint["temperature"]),
        "tta": checkpoint_tta(checkpoint),
    }
    digest.update(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(checkpoint["model"]):
        digest.update(name.encode())
        _hash_update_tensor(digest, checkpoint["model"][name])
    return digest.hexdigest()[:24]


def _atomic_target(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _max_prob_difference(session: Any, graph: ScoringGraph, pixels: torch.Tensor) -> float:
    with torch.inference_mode():
        _, _, expected = graph(pixels)
    got = session.run([OUTPUT_NAMES[2]], {INPUT_NAME: pixels.numpy()})[0]
    return float(np.abs(got - expected.numpy()).max())


def export_onnx(
    checkpoint: Checkpoint,
    path: str | Path,
    *,
    check_pixels: torch.Tensor | None = None,
    tolerance: float = FP32_TOLERANCE,
) -> Path:
    """Export the checkpoint's ``ScoringGraph`` to ``path`` (fp32, dynamic batch axis).

    The export is run once with ONNX Runtime against torch on ``check_pixels`` (uint8
    (N, 3, S, S); random pixels when not given) and refused (``OnnxEngineError``, no file)
    when a probability differs by more than ``tolerance``.
    """
    import onnxruntime as ort

    path = Path(path)
    graph = scoring_graph(checkpoint)
    size = int(checkpoint["input_size"])
    if check_pixels is None:
        generator = torch.Generator().manual_seed(0)
        check_pixels = torch.randint(0, 256, (2, 3, size, size), generator=generator)
    check_pixels = check_pixels.to(torch.uint8).contiguous()
    example = check_pixels[:2] if check_pixels.shape[0] >= 2 else check_pixels.repeat(2, 1, 1, 1)
    tmp = _atomic_target(path)
    started = time.perf_counter()
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            # the TorchScript exporter (no onnxscript needed); "same" padding of
            # EfficientNet-Lite is computed from the traced (fixed) input size
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                (example,),
                str(tmp),
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)},
                do_constant_folding=True,
            )
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        difference = _max_prob_difference(session, graph, check_pixels)
        if not difference <= tolerance:
            raise OnnxEngineError(
                f"the ONNX export of this {checkpoint['arch']} differs from torch by "
                f"{difference:.2e} in probability (tolerance {tolerance:.0e}); not used"
            )
        tmp.replace(path)
    except OnnxEngineError:
        raise
    except Exception as exc:
        raise OnnxEngineError(f"ONNX export of {checkpoint['arch']} failed: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    logger.info(
        "exported %s to %s in %.1f s (max probability difference vs torch %.1e)",
        checkpoint["arch"],
        path,
        time.perf_counter() - started,
        difference,
    )
    return path


class _PixelReader:
    """ONNX Runtime's CalibrationDataReader over batches of uint8 pixels."""

    def __init__(self, batches: Sequence[np.ndarray]) -> None:
        self._batches = list(batches)
        self._iter: Iterator[np.ndarray] = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._iter, None)
        return None if batch is None else {INPUT_NAME: batch}

    def rewind(self) -> None:
        self._iter = iter(self._batches)


def calibration_batches(
    images: Iterable[torch.Tensor], batch_size: int = CALIBRATION_BATCH
) -> list[np.ndarray]:
    """Resized uint8 images (3, S, S) or batches (N, 3, S, S) -> uint8 batches."""
    flat: list[torch.Tensor] = []
    for image in images:
        flat.extend(image.unbind(0) if image.dim() == 4 else [image])
    if not flat:
        return []
    stacked = torch.stack([i.to(torch.uint8).cpu() for i in flat]).contiguous().numpy()
    return [stacked[i : i + batch_size] for i in range(0, len(stacked), batch_size)]


def pixels_key(batches: Sequence[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for batch in batches:
        digest.update(str(batch.shape).encode())
        digest.update(np.ascontiguousarray(batch).tobytes())
    return digest.hexdigest()[:16]


def quantize_int8(
    fp32_path: str | Path, path: str | Path, calibration: Sequence[np.ndarray]
) -> Path:
    """Quantise an exported fp32 graph statically to int8 (QDQ, per-channel weights,
    MinMax activation ranges from ``calibration``: uint8 pixel batches of real cells)."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration:
        raise OnnxEngineError("int8 quantisation needs calibration cells; none were given")
    path = Path(path)
    tmp = _atomic_target(path)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="wbc-quant-") as work:
        prepared = Path(work) / "prepared.onnx"
        try:
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                str(prepared),
                str(tmp),
                _PixelReader(calibration),  # type: ignore[arg-type]
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                # uint8 activations with int8 weights (U8S8): the fast path of ONNX
                # Runtime's x86 kernels (VNNI); S8S8 measured 12.0 img/s against 29.4 for
                # ResNet-152 on 2 cores (fp32 9.0), at the same Lite0 agreement
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=list(INT8_OP_TYPES),
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"CalibTensorRangeSymmetric": False},
            )
            tmp.replace(path)
        except Exception as exc:
            raise OnnxEngineError(f"int8 quantisation failed: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)
    n = sum(len(b) for b in calibration)
    logger.info(
        "quantised %s to int8 with %d calibration cells in %.1f s",
        fp32_path,
        n,
        time.perf_counter() - started,
    )
    return path


@dataclass(frozen=True)
class OnnxOutputs:
    features: np.ndarray
    logits: np.ndarray
    probabilities: np.ndarray


class OnnxModel:
    """An ONNX Runtime session of an exported ``ScoringGraph``."""

    def __init__(self, path: str | Path, *, engine: str, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.engine = check_engine(engine)
        self.threads = threads or default_threads()
        # for int8: {"agreement", "n"} against fp32 on the check cells (prepare_onnx)
        self.int8_verdict: dict[str, float] | None = None
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise OnnxEngineError(f"cannot open {self.path}: {exc}") from exc

    def run(self, pixels: torch.Tensor | np.ndarray) -> OnnxOutputs:
        """uint8 pixels (N, 3, S, S) -> features, logits and calibrated probabilities."""
        if isinstance(pixels, torch.Tensor):
            pixels = pixels.to(torch.uint8).cpu().contiguous().numpy()
        features, logits, probabilities = self.session.run(
            list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(pixels, dtype=np.uint8)}
        )
        return OnnxOutputs(features, logits, probabilities)

    def describe(self) -> str:
        return f"{self.engine} ({self.path.name}, {self.threads} threads)"


def prepare_onnx(
    checkpoint: Checkpoint,
    engine: str,
    cache_dir: str | Path,
    *,
    calibration: Iterable[torch.Tensor] | None = None,
    threads: int | None = None,
    check: Iterable[torch.Tensor] | None = None,
) -> OnnxModel:
    """The ONNX model for ``engine`` ("onnx" or "onnx-int8"), exported (and quantised)
    into ``cache_dir`` unless a file made from the same inputs is there already.

    ``calibration``: resized uint8 cell images for int8. Raises ``OnnxEngineError`` when
    the export, the quantisation or the session fails; the caller keeps the torch path.
    """
    check_engine(engine)
    if engine == "torch":
        raise ValueError("prepare_onnx is for the ONNX engines")
    cache = Path(cache_dir)
    key = checkpoint_key(checkpoint)
    fp32 = cache / f"{checkpoint['arch']}-{key}.fp32.onnx"
    calib = calibration_batches(calibration or [])
    if not fp32.is_file():
        first = torch.from_numpy(np.concatenate(calib[:2])) if calib else None
        export_onnx(checkpoint, fp32, check_pixels=first)
    if engine == "onnx":
        return OnnxModel(fp32, engine=engine, threads=threads)
    int8 = cache / f"{checkpoint['arch']}-{key}.int8-{pixels_key(calib)}.onnx"
    # agreement is judged on cells kept apart from the calibration where given: on its own
    # calibration cells a quantised model looks better than on cells it never saw
    checked = calibration_batches(check or []) or calib
    verdict_path = int8.with_name(f"{int8.stem}.check-{pixels_key(checked)}.json")
    verdict = _read_verdict(verdict_path)
    if verdict is None:
        if not int8.is_file():
            quantize_int8(fp32, int8, calib)
        verdict = int8_agreement(
            OnnxModel(fp32, engine="onnx", threads=threads),
            OnnxModel(int8, engine=engine, threads=threads),
            checked,
        )
        _write_json(verdict_path, verdict)
    if verdict["agreement"] < INT8_MIN_AGREEMENT:
        # a quantised model that changes answers is not the same model: fp32 scores
        logger.warning(
            "int8 for %s agrees with fp32 on %.1f %% of %d check cells (needs %.1f %%): "
            "scoring with onnx fp32",
            checkpoint["arch"],
            100 * verdict["agreement"],
            verdict["n"],
            100 * INT8_MIN_AGREEMENT,
        )
        refused = OnnxModel(fp32, engine="onnx", threads=threads)
        refused.int8_verdict = verdict
        return refused
    served = OnnxModel(int8, engine=engine, threads=threads)
    served.int8_verdict = verdict
    return served


def int8_agreement(
    fp32: OnnxModel, int8: OnnxModel, batches: Sequence[np.ndarray]
) -> dict[str, float]:
    """Top-1 agreement of the int8 graph with the fp32 one on ``batches``."""
    same = total = 0
    for batch in batches:
        a = fp32.run(batch).logits.argmax(1)
        b = int8.run(batch).logits.argmax(1)
        same += int((a == b).sum())
        total += len(a)
    return {"agreement": same / max(1, total), "n": total}


def _read_verdict(path: Path) -> dict[str, float] | None:
    try:
        data = json.loads(path.read_text())
        return {"agreement": float(data["agreement"]), "n": int(data["n"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_json(path: Path, data: dict[str, float]) -> None:
    tmp = _atomic_target(path)
    try:
        tmp.write_text(json.dumps(data))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
