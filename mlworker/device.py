"""Device and precision, chosen once per process and passed to everything that runs a model.

Scoring and training both call ``choose_runtime`` so that the two agree on where tensors
live, on the memory format and on the autocast dtype.

Precision policy:
- CUDA: bf16 autocast (tensor cores; fp32 accumulation keeps softmax outputs stable).
- CPU: fp32 by default. bf16 autocast is several times faster on CPUs with AVX512-BF16
  or AMX, but it changes probabilities by up to a few 1e-2 (see docs/benchmarks.md), so
  it is an explicit opt-in (``precision="bf16"``) rather than a silent default.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch

logger = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class Runtime:
    """Where and how a model runs."""

    device: torch.device
    dtype: torch.dtype | None  # autocast dtype; None means plain fp32
    channels_last: bool = True

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """Autocast context for this runtime (a no-op in fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return model

    def prepare_batch(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device, non_blocking=True)
        if self.channels_last and batch.dim() == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch

    def describe(self) -> str:
        precision = "fp32" if self.dtype is None else str(self.dtype).removeprefix("torch.")
        layout = "channels_last" if self.channels_last else "NCHW"
        return f"{self.device} {precision} {layout}"


def choose_runtime(
    device: str | torch.device | None = None,
    precision: Precision | str = "auto",
    channels_last: bool = True,
) -> Runtime:
    """Pick the device (CUDA when present unless told otherwise) and the autocast dtype."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was requested but torch.cuda.is_available() is False")
    dtype: torch.dtype | None
    if precision == "bf16":
        dtype = torch.bfloat16
    elif precision == "fp32":
        dtype = None
    else:
        dtype = torch.bfloat16 if dev.type == "cuda" else None
    runtime = Runtime(device=dev, dtype=dtype, channels_last=channels_last)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    logger.info("runtime: %s", runtime.describe())
    return runtime


@contextlib.contextmanager
def inference(runtime: Runtime) -> Iterator[None]:
    """``torch.inference_mode`` plus the runtime's autocast."""
    with torch.inference_mode(), runtime.autocast():
        yield
