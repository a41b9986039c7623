"""Every URL of the REST API (mounted at /api/). Rules for each: the view's
``permission_classes``; the table test: tests/annotation/api/test_permissions.py."""

from __future__ import annotations

from typing import Any

from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from annotation.api import (
    adjudication,
    auth,
    cases,
    cells,
    exports,
    gold,
    labels,
    lis,
    models,
    queue,
    review,
)
from annotation.api.errors import json_not_found
from annotation.api.permissions import EVERYONE, Roles

app_name = "api"


# Signed-in users only, like every URL but sign-in and the health check.
class SchemaApi(SpectacularAPIView):
    permission_classes = [Roles(GET=EVERYONE)]


class DocsApi(SpectacularSwaggerView):
    permission_classes = [Roles(GET=EVERYONE)]


urlpatterns: list[Any] = [
    path("schema/", SchemaApi.as_view(), name="schema"),
    path("docs/", DocsApi.as_view(url_name="api:schema"), name="docs"),
    # auth and users
    path("auth/token/", auth.TokenObtainApi.as_view(), name="auth-token"),
    path("auth/token/revoke/", auth.TokenRevokeOwnApi.as_view(), name="auth-token-revoke"),
    path("auth/me/", auth.MeApi.as_view(), name="auth-me"),
    path("users/", auth.UserListCreateApi.as_view(), name="users"),
    path("users/<int:user_id>/", auth.UserDetailApi.as_view(), name="user-detail"),
    path(
        "users/<int:user_id>/token/revoke/",
        auth.UserTokenRevokeApi.as_view(),
        name="user-token-revoke",
    ),
    # cases
    path("cases/", cases.CaseListCreateApi.as_view(), name="cases"),
    path("cases/<int:case_id>/", cases.CaseDetailApi.as_view(), name="case-detail"),
    path("cases/<int:case_id>/sign-off/", review.CaseSignOffApi.as_view(), name="case-signoff"),
    # the case's review to its signed report (annotation/api/review.py)
    path("review-rules/", review.ReviewRulesApi.as_view(), name="review-rules"),
    path("cases/<int:case_id>/reopen/", review.CaseReopenApi.as_view(), name="case-reopen"),
    path(
        "cases/<int:case_id>/interpretation/",
        review.CaseInterpretationApi.as_view(),
        name="case-interpretation",
    ),
    path(
        "cases/<int:case_id>/cell-notes/",
        review.CaseCellNoteListApi.as_view(),
        name="case-cell-notes",
    ),
    path(
        "cases/<int:case_id>/cell-notes/<int:cell_id>/",
        review.CaseCellNoteApi.as_view(),
        name="case-cell-note",
    ),
    path("cases/<int:case_id>/reports/", review.CaseReportListApi.as_view(), name="case-reports"),
    path(
        "cases/<int:case_id>/reports/<int:version>/",
        review.CaseReportDetailApi.as_view(),
        name="case-report-detail",
    ),
    path(
        "cases/<int:case_id>/reports/<int:version>/html/",
        review.CaseReportHtmlApi.as_view(),
        name="case-report-html",
    ),
    path(
        "cases/<int:case_id>/reports/<int:version>/pdf/",
        review.CaseReportPdfApi.as_view(),
        name="case-report-pdf",
    ),
    # cells and labels
    # the signed report sent to the LIS (annotation/api/lis.py)
    path(
        "cases/<int:case_id>/lis-deliveries/",
        lis.CaseLisDeliveriesApi.as_view(),
        name="case-lis-deliveries",
    ),
    path(
        "lis-deliveries/<int:delivery_id>/retry/",
        lis.LisDeliveryRetryApi.as_view(),
        name="lis-delivery-retry",
    ),
    path("cells/", cells.CellListApi.as_view(), name="cells"),
    path("cells/upload/", cells.CellUploadApi.as_view(), name="cell-upload"),
    path("cells/<int:cell_id>/", cells.CellDetailApi.as_view(), name="cell-detail"),
    path("cells/<int:cell_id>/image/", cells.CellImageApi.as_view(), name="cell-image"),
    path("cells/<int:cell_id>/thumbnail/", cells.CellThumbnailApi.as_view(), name="cell-thumbnail"),
    path("cells/<int:cell_id>/labels/", labels.CellLabelsApi.as_view(), name="cell-labels"),
    path(
        "segmentations/<int:segmentation_id>/mask/",
        cells.SegmentationMaskApi.as_view(),
        name="segmentation-mask",
    ),
    # review queue
    path("queue/next/", queue.ReviewNextApi.as_view(), name="queue-next"),
    path("queue/counts/", queue.ReviewCountsApi.as_view(), name="queue-counts"),
    path("queue/release/", queue.ReviewReleaseManyApi.as_view(), name="queue-release-many"),
    path("queue/items/<int:item_id>/submit/", queue.ReviewSubmitApi.as_view(), name="queue-submit"),
    path("queue/items/<int:item_id>/skip/", queue.ReviewSkipApi.as_view(), name="queue-skip"),
    path(
        "queue/items/<int:item_id>/release/", queue.ReviewReleaseApi.as_view(), name="queue-release"
    ),
    path("queue/items/<int:item_id>/flag/", queue.ReviewFlagApi.as_view(), name="queue-flag"),
    path("routing-config/", models.RoutingConfigApi.as_view(), name="routing-config"),
    # double reading
    path("adjudication/", adjudication.AdjudicationListApi.as_view(), name="adjudication"),
    path(
        "adjudication/<int:item_id>/decide/",
        adjudication.AdjudicationDecideApi.as_view(),
        name="adjudication-decide",
    ),
    path("agreement/", adjudication.AgreementApi.as_view(), name="agreement"),
    # gold cells
    path("gold/", gold.GoldListCreateApi.as_view(), name="gold"),
    path("gold/performance/", gold.GoldPerformanceApi.as_view(), name="gold-performance"),
    path("gold/<int:cell_id>/", gold.GoldRetireApi.as_view(), name="gold-retire"),
    # model versions and training
    path("model-versions/", models.ModelVersionListApi.as_view(), name="model-versions"),
    path(
        "model-versions/compare/",
        models.ModelVersionCompareApi.as_view(),
        name="model-version-compare",
    ),
    path(
        "model-versions/<int:version_id>/",
        models.ModelVersionDetailApi.as_view(),
        name="model-version-detail",
    ),
    path(
        "model-versions/<int:version_id>/promote/",
        models.ModelVersionPromoteApi.as_view(),
        name="model-version-promote",
    ),
    path(
        "model-versions/<int:version_id>/rollback/",
        models.ModelVersionRollbackApi.as_view(),
        name="model-version-rollback",
    ),
    path("training-jobs/", models.TrainingJobListCreateApi.as_view(), name="training-jobs"),
    path(
        "training-jobs/<int:job_id>/",
        models.TrainingJobDetailApi.as_view(),
        name="training-job-detail",
    ),
    path(
        "training-jobs/<int:job_id>/cancel/",
        models.TrainingJobCancelApi.as_view(),
        name="training-job-cancel",
    ),
    # exports
    path("exports/", exports.ExportApi.as_view(), name="exports"),
    path("export-jobs/", exports.ExportJobListApi.as_view(), name="export-jobs"),
    path(
        "export-jobs/<int:job_id>/", exports.ExportJobDetailApi.as_view(), name="export-job-detail"
    ),
    path(
        "export-jobs/<int:job_id>/download/",
        exports.ExportJobDownloadApi.as_view(),
        name="export-job-download",
    ),
    # Anything else under /api/ answers in the API's error shape, not an HTML page.
    # [\s\S], not ".": a path with an encoded newline (%0A) is an unknown URL too.
    re_path(r"^[\s\S]*$", json_not_found, name="not-found"),
]
