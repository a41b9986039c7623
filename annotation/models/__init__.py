"""All models of the annotation app, by area."""

from annotation.models.core import AuditEvent, Case, CellImage, ImportBatch, Label
from annotation.models.gold import GoldCell, GoldCheck
from annotation.models.lis import LisDelivery
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
from annotation.models.review import (
    CaseInterpretation,
    CaseReopening,
    CaseReport,
    CellNote,
    ReviewRules,
)

__all__ = [
    "AuditEvent",
    "Case",
    "CaseInterpretation",
    "CaseReopening",
    "CaseReport",
    "CellImage",
    "CellNote",
    "EvaluationSet",
    "ExportJob",
    "GoldCell",
    "GoldCheck",
    "ImportBatch",
    "Label",
    "LisDelivery",
    "ModelVersion",
    "Prediction",
    "ReviewItem",
    "ReviewRules",
    "ReviewSkip",
    "RoutingConfig",
    "Segmentation",
    "TrainingJob",
]
