"""Progress: the ``progress`` callback of ``fit``, its heartbeats, the per-epoch tqdm bar.

The product's retraining job turns each report into a job update and its watchdog kills a
job that has been silent too long, so long passes (an epoch, a validation, decoding the
images) send a heartbeat at least every ``--progress-every-s`` seconds.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import torch

logger = logging.getLogger(__name__)

ProgressFn = Callable[[dict[str, Any]], None]
HeartbeatFn = Callable[[float, float, float], None]  # (fraction of the epoch, loss, accuracy)
T = TypeVar("T")


class Progress:
    """Reports ``{stage, epoch, epochs, percent, loss, accuracy, log}`` to ``callback``.

    Without a callback a report's line is logged. ``percent`` counts epochs (and the
    calibration) done out of those planned; ``where`` is the (stage, epoch, epochs) that
    heartbeats outside an epoch's training (validation, decoding) report.
    """

    def __init__(
        self, callback: ProgressFn | None, *, planned: Mapping[str, int], every_s: float
    ) -> None:
        self.callback = callback
        self.planned = dict(planned)
        self.every_s = every_s
        self.total_units = max(1, sum(self.planned.values()))
        self.units_done = 0.0
        self.where: tuple[str, int, int] = ("head", 0, 0)
        self.last_report = 0.0
        self.last_loss = 0.0
        self.last_accuracy = 0.0

    def percent(self) -> float:
        return round(min(100.0, 100.0 * self.units_done / self.total_units), 2)

    def report(
        self,
        stage: str,
        epoch: int,
        epochs: int,
        log: str,
        *,
        loss: float = math.nan,
        accuracy: float = math.nan,
    ) -> None:
        self.last_report = time.monotonic()
        # JSON has no NaN: a report without a new figure repeats the last one
        if math.isfinite(loss):
            self.last_loss = float(loss)
        if math.isfinite(accuracy):
            self.last_accuracy = float(accuracy)
        if self.callback is None:
            if log:
                logger.info(log)
            return
        self.callback(
            {
                "stage": stage,
                "epoch": epoch,
                "epochs": epochs,
                "percent": self.percent(),
                "loss": self.last_loss,
                "accuracy": self.last_accuracy,
                "log": log,
            }
        )

    def due(self) -> bool:
        return time.monotonic() - self.last_report >= self.every_s

    def beat(self) -> None:
        """A heartbeat from ``where``, when one is due."""
        if self.due():
            self.report(*self.where, "")

    def heartbeat(self, stage: str, epoch: int, epochs: int) -> HeartbeatFn:
        """A heartbeat within an epoch: its share of the epoch counts towards ``percent``."""

        def beat(fraction: float, loss: float, accuracy: float) -> None:
            if not self.due():
                return
            base = self.units_done
            self.units_done = base + fraction
            try:
                self.report(stage, epoch, epochs, "", loss=loss, accuracy=accuracy)
            finally:
                self.units_done = base

        return beat


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    n: int


class EpochMeter:
    """Running loss and accuracy of one training epoch, a tqdm bar and heartbeats.

    ``track`` counts the batches (skipped ones too: the heartbeat's fraction of the epoch);
    ``update`` adds a trained batch. Use it as a context manager so the bar is closed.
    """

    def __init__(
        self,
        n_batches: int,
        *,
        heartbeat: HeartbeatFn | None = None,
        bar_desc: str | None = None,
    ) -> None:
        self.n_batches = n_batches
        self.heartbeat = heartbeat
        self.bar_desc = bar_desc
        self.bar: Any = None
        self.done = 0
        self.total_loss, self.correct, self.seen = 0.0, 0, 0

    def __enter__(self) -> EpochMeter:
        if self.bar_desc is not None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.n_batches,
                desc=self.bar_desc,
                unit="batch",
                leave=True,
                dynamic_ncols=True,
                mininterval=1.0 if sys.stderr.isatty() else 30.0,
                file=sys.stderr,
            )
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def track(self, batches: Iterable[T]) -> Iterator[T]:
        for self.done, batch in enumerate(batches, start=1):
            yield batch

    def update(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.total_loss += float(loss.detach()) * len(labels)
        self.correct += int((logits.detach().argmax(1) == labels).sum())
        self.seen += len(labels)
        loss_so_far, accuracy = self.total_loss / self.seen, self.correct / self.seen
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss_so_far:.3f}", acc=f"{accuracy:.3f}", refresh=False)
            self.bar.update(1)
        if self.heartbeat is not None:
            self.heartbeat(self.done / max(1, self.n_batches), loss_so_far, accuracy)

    def stats(self) -> EpochStats:
        if self.seen == 0:
            raise ValueError("no readable training image in this epoch")
        return EpochStats(self.total_loss / self.seen, self.correct / self.seen, self.seen)
