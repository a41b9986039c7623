"""Temperature scaling and expected calibration error.

Softmax outputs of a deep network are usually over-confident; routing "low confidence"
cells to hematologists only makes sense if a max probability of 0.7 means right about
70 % of the time. Temperature scaling (Guo et al., 2017) divides the logits by one scalar
T fitted on a held-out validation split by minimising the negative log-likelihood; it
never changes the predicted class. T is stored in the checkpoint and applied by scoring.

CLI: ``python -m mlworker.calibration --checkpoint CKPT --data VALDIR --out CKPT2``
scores the validation folder, fits T, reports ECE (15 bins) before and after, and writes
a checkpoint with the temperature and both ECEs in its metrics.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

ECE_BINS = 15


def softmax_with_temperature(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return torch.softmax(logits.float() / temperature, dim=-1)


@dataclass(frozen=True)
class ReliabilityBin:
    lower: float
    upper: float
    count: int
    confidence: float  # mean max probability in the bin (nan when empty)
    accuracy: float  # fraction correct in the bin (nan when empty)


def reliability_bins(
    probabilities: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    n_bins: int = ECE_BINS,
) -> list[ReliabilityBin]:
    """Equal-width bins over max probability, (lower, upper] as in Guo et al."""
    probs = torch.as_tensor(probabilities, dtype=torch.float64)
    targets = torch.as_tensor(labels, dtype=torch.long)
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == targets).double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    bins = []
    for i in range(n_bins):
        lower, upper = float(edges[i]), float(edges[i + 1])
        in_bin = (confidence > lower) & (confidence <= upper)
        if i == 0:
            in_bin |= confidence == 0
        count = int(in_bin.sum())
        bins.append(
            ReliabilityBin(
                lower=lower,
                upper=upper,
                count=count,
                confidence=float(confidence[in_bin].mean()) if count else math.nan,
                accuracy=float(correct[in_bin].mean()) if count else math.nan,
            )
        )
    return bins


def expected_calibration_error(
    probabilities: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    n_bins: int = ECE_BINS,
) -> float:
    """ECE: the count-weighted mean |accuracy - confidence| over ``n_bins`` bins."""
    bins = reliability_bins(probabilities, labels, n_bins)
    total = sum(b.count for b in bins)
    if total == 0:
        raise ValueError("ECE needs at least one labelled prediction")
    return sum(b.count * abs(b.accuracy - b.confidence) for b in bins if b.count) / total


def fit_temperature(
    logits: torch.Tensor,
    labels: torch.Tensor,
    max_iter: int = 100,
) -> float:
    """Temperature minimising validation NLL (LBFGS on log T, so T stays positive)."""
    logits = logits.detach().double().cpu()
    labels = labels.detach().long().cpu()
    if logits.shape[0] == 0 or logits.shape[0] != labels.shape[0]:
        raise ValueError("fit_temperature needs as many labels as logits, at least one")
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimizer.step(closure)  # type: ignore[no-untyped-call]
    temperature = float(log_t.detach().exp())
    if not math.isfinite(temperature) or temperature <= 0:
        raise RuntimeError(f"temperature fit diverged (T={temperature})")
    return temperature


@dataclass(frozen=True)
class CalibrationReport:
    temperature: float
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    n_images: int

    def as_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


def calibrate(logits: torch.Tensor, labels: torch.Tensor) -> CalibrationReport:
    """Fit T and measure ECE and NLL before (T=1) and after."""
    temperature = fit_temperature(logits, labels)
    logits = logits.detach().double().cpu()
    labels = labels.detach().long().cpu()
    return CalibrationReport(
        temperature=temperature,
        ece_before=expected_calibration_error(softmax_with_temperature(logits), labels),
        ece_after=expected_calibration_error(softmax_with_temperature(logits, temperature), labels),
        nll_before=float(F.cross_entropy(logits, labels)),
        nll_after=float(F.cross_entropy(logits / temperature, labels)),
        n_images=int(labels.numel()),
    )


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Fit temperature scaling on a validation set")
    parser.add_argument("--checkpoint", required=True, help="checkpoint to calibrate")
    parser.add_argument("--data", required=True, help="validation folder (manifest or classes)")
    parser.add_argument("--out", required=True, help="where to write the calibrated checkpoint")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch")
    parser.add_argument("--workers", type=int, default=None, help="decode workers")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: auto)")
    parser.add_argument("--precision", default="auto", help="auto, fp32 or bf16")
    return parser


def main(args: argparse.Namespace) -> CalibrationReport:
    from mlworker.data import discover_samples
    from mlworker.device import choose_runtime
    from mlworker.model import load_checkpoint, save_checkpoint
    from mlworker.score import Scorer, score_labelled

    checkpoint = load_checkpoint(args.checkpoint)
    samples = discover_samples(args.data)
    scorer = Scorer(checkpoint, runtime=choose_runtime(args.device, args.precision))
    scored = score_labelled(scorer, samples, batch_size=args.batch_size, num_workers=args.workers)
    report = calibrate(torch.from_numpy(scored.logits), torch.from_numpy(scored.labels))
    checkpoint["temperature"] = report.temperature
    checkpoint["metrics"] = {**checkpoint["metrics"], "calibration": report.as_dict()}
    save_checkpoint(checkpoint, args.out)
    print(json.dumps(report.as_dict(), indent=2))
    return report


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main(get_args_parser().parse_args())
