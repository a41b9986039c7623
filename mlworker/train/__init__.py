"""Training: the reference paper's two-stage protocol, the weak-class pass, calibration.

The product's retraining job (annotation/services/training/run.py) calls
``parse_train_config``, ``fit`` and ``evaluate_samples``; the CLI
(``python -m mlworker.train``) calls ``main``. See mlworker/training.md.
"""

from mlworker.train.cli import get_args_parser, main
from mlworker.train.config import TrainConfig, parse_train_config
from mlworker.train.engine import TrainResult, evaluate_samples, fit

__all__ = [
    "TrainConfig",
    "TrainResult",
    "evaluate_samples",
    "fit",
    "get_args_parser",
    "main",
    "parse_train_config",
]
