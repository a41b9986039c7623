"""All models of the annotation app, by area."""

from annotation.models.core import AuditEvent, Case, CellImage, ImportBatch, Label
from annotation.models.gold import GoldCell, GoldCheck
from annotation.models.pipeline import (
    EvaluationSet,
    ExportJob,
    ModelVersion,
    Prediction,
    ReviewItem,
    ReviewSkip,
    RoutingConfig,
    Segmentation,
    TrainingJob,
)

__all__ = [
    "AuditEvent",
    "Case",
    "CellImage",
    "EvaluationSet",
    "ExportJob",
    "GoldCell",
    "GoldCheck",
    "ImportBatch",
    "Label",
    "ModelVersion",
    "Prediction",
    "ReviewItem",
    "ReviewSkip",
    "RoutingConfig",
    "Segmentation",
    "TrainingJob",
]
