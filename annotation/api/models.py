"""Model versions (list, detail with metrics, compare, promote, rollback), training jobs
(trigger, list, detail, cancel) and the review-queue routing settings."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation.api.common import (
    Choice,
    InputSerializer,
    no_input,
    paginated,
    paginated_response,
    query_input,
    request_user,
)
from annotation.api.permissions import ADMINS, EVERYONE, Roles
from annotation.api.schema import error_responses
from annotation.models import ModelVersion, RoutingConfig, TrainingJob
from annotation.selectors.model_registry import (
    model_version_compare,
    model_version_get,
    model_version_list,
)
from annotation.selectors.routing import routing_config_get
from annotation.selectors.training import training_job_get, training_job_list
from annotation.services.model_registry import model_version_promote, model_version_rollback
from annotation.services.routing import _LIMITS as ROUTING_LIMITS  # one table of bounds
from annotation.services.routing import routing_config_update
from annotation.services.training import training_job_cancel, training_job_create
from mlworker import active_learning


class ModelVersionSerializer(serializers.ModelSerializer[ModelVersion]):
    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "name",
            "arch",
            "status",
            "image_size",
            "temperature",
            "parent",
            "triggered_by",
            "created_at",
            "promoted_at",
        ]


class ModelVersionDetailSerializer(ModelVersionSerializer):
    class Meta(ModelVersionSerializer.Meta):
        fields = [
            *ModelVersionSerializer.Meta.fields,
            "class_codes",
            "metrics",
            "per_class_tpr",
            "training_snapshot",
        ]


class ModelVersionListApi(APIView):
    permission_classes = [Roles(GET=EVERYONE)]

    class FilterSerializer(serializers.Serializer):
        status = Choice(choices=ModelVersion.Status.choices, required=False)

    @extend_schema(
        operation_id="model_versions_list",
        parameters=[FilterSerializer],
        responses=paginated(ModelVersionSerializer),
    )
    def get(self, request: Request) -> Response:
        params = self.FilterSerializer(data=query_input(request))
        params.is_valid(raise_exception=True)
        queryset = model_version_list(status=params.validated_data.get("status"))
        return paginated_response(
            request=request, view=self, queryset=queryset, serializer_class=ModelVersionSerializer
        )


class ModelVersionDetailApi(APIView):
    permission_classes = [Roles(GET=EVERYONE)]

    @extend_schema(responses=ModelVersionDetailSerializer)
    def get(self, request: Request, version_id: int) -> Response:
        return Response(ModelVersionDetailSerializer(model_version_get(version_id=version_id)).data)


class ModelVersionCompareApi(APIView):
    """Per-class TPR of two versions on the same validation set, and whether ``b`` would
    pass the promotion guard against ``a``."""

    permission_classes = [Roles(GET=EVERYONE)]

    class CompareParamsSerializer(serializers.Serializer):
        a = serializers.IntegerField(min_value=1, max_value=2**63 - 1)
        b = serializers.IntegerField(min_value=1, max_value=2**63 - 1)

    @extend_schema(
        parameters=[CompareParamsSerializer],
        responses={200: OpenApiTypes.OBJECT, **error_responses(404)},
    )
    def get(self, request: Request) -> Response:
        params = self.CompareParamsSerializer(data=query_input(request))
        params.is_valid(raise_exception=True)
        return Response(
            model_version_compare(a_id=params.validated_data["a"], b_id=params.validated_data["b"])
        )


class ModelVersionPromoteApi(APIView):
    """Make a candidate the active version. Refused (409) if it regresses against the
    active one, unless ``force`` is true."""

    permission_classes = [Roles(POST=ADMINS)]

    class PromoteInputSerializer(InputSerializer):
        force = serializers.BooleanField(default=False)

    @extend_schema(
        request=PromoteInputSerializer,
        responses={200: ModelVersionDetailSerializer, **error_responses(409)},
    )
    def post(self, request: Request, version_id: int) -> Response:
        data = self.PromoteInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        version = model_version_promote(
            version_id=version_id, user=request_user(request), force=data.validated_data["force"]
        )
        return Response(ModelVersionDetailSerializer(version).data)


class ModelVersionRollbackApi(APIView):
    """Make an earlier (retired) version active again."""

    permission_classes = [Roles(POST=ADMINS)]

    @extend_schema(
        request=None, responses={200: ModelVersionDetailSerializer, **error_responses(409)}
    )
    def post(self, request: Request, version_id: int) -> Response:
        no_input(request)
        version = model_version_rollback(version_id=version_id, user=request_user(request))
        return Response(ModelVersionDetailSerializer(version).data)


# --- training jobs ------------------------------------------------------------------------


class TrainingJobSerializer(serializers.ModelSerializer[TrainingJob]):
    result_version_name = serializers.CharField(
        source="result_version.name", allow_null=True, default=None
    )
    created_by = serializers.CharField(source="created_by.username", allow_null=True, default=None)

    class Meta:
        model = TrainingJob
        fields = [
            "id",
            "trigger",
            "status",
            "progress",
            "error",
            "params",
            "result_version",
            "result_version_name",
            "created_by",
            "created_at",
            "started_at",
            "finished_at",
            "heartbeat_at",
        ]


class TrainingJobDetailSerializer(TrainingJobSerializer):
    class Meta(TrainingJobSerializer.Meta):
        fields = [*TrainingJobSerializer.Meta.fields, "log_tail"]


class TrainingParamsInputSerializer(InputSerializer):
    """``params`` of a training job: what the job honours, nothing else."""

    args = serializers.ListField(
        child=serializers.CharField(max_length=200),
        max_length=64,
        required=False,
        help_text=(
            "training flags added after WBC_RETRAIN_ARGS, as the CLI takes them, e.g. "
            '["--epochs-finetune", "3", "--epochs-weak", "1"] (mlworker/training.md)'
        ),
    )

    def validate_args(self, value: list[str]) -> list[str]:
        # The job parses these in a worker much later; a wrong flag must be refused
        # now, with the parser's own reason, not fail the job an hour from now.
        from mlworker.train import parse_train_config

        try:
            parse_train_config(list(value))
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from None
        return value


class TrainingJobListCreateApi(APIView):
    """GET: training jobs, newest first. POST: start retraining now (admins; 409 while
    another job is queued or running)."""

    permission_classes = [Roles(GET=EVERYONE, POST=ADMINS)]

    class TrainingJobCreateInputSerializer(InputSerializer):
        params = TrainingParamsInputSerializer(
            required=False, help_text="what this job does differently from the defaults"
        )

    @extend_schema(operation_id="training_jobs_list", responses=paginated(TrainingJobSerializer))
    def get(self, request: Request) -> Response:
        return paginated_response(
            request=request,
            view=self,
            queryset=training_job_list(),
            serializer_class=TrainingJobSerializer,
        )

    @extend_schema(
        request=TrainingJobCreateInputSerializer,
        responses={201: TrainingJobDetailSerializer, **error_responses(409)},
    )
    def post(self, request: Request) -> Response:
        data = self.TrainingJobCreateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        job = training_job_create(
            trigger=TrainingJob.Trigger.API,
            user=request_user(request),
            params=dict(data.validated_data.get("params") or {}),
        )
        return Response(TrainingJobDetailSerializer(job).data, status=status.HTTP_201_CREATED)


class TrainingJobDetailApi(APIView):
    permission_classes = [Roles(GET=EVERYONE)]

    @extend_schema(responses=TrainingJobDetailSerializer)
    def get(self, request: Request, job_id: int) -> Response:
        job = training_job_get(job_id=job_id)
        return Response(TrainingJobDetailSerializer(job).data)


class TrainingJobCancelApi(APIView):
    permission_classes = [Roles(POST=ADMINS)]

    @extend_schema(
        request=None, responses={200: TrainingJobDetailSerializer, **error_responses(409)}
    )
    def post(self, request: Request, job_id: int) -> Response:
        no_input(request)
        job = training_job_cancel(job_id=job_id, user=request_user(request))
        return Response(TrainingJobDetailSerializer(job).data)


# --- routing settings ---------------------------------------------------------------------


class RoutingConfigSerializer(serializers.ModelSerializer[RoutingConfig]):
    class Meta:
        model = RoutingConfig
        fields = [
            "confidence_threshold",
            "weak_class_tpr",
            "audit_rate",
            "strategy",
            "lease_seconds",
            "retrain_min_new_labels",
            "retrain_every_labels",
            "labels_required_abnormal",
            "gold_rate",
            "updated_at",
        ]
        read_only_fields = ["updated_at"]


def _bounds(name: str) -> dict[str, Any]:
    low, high = ROUTING_LIMITS[name]
    return {"min_value": low, "max_value": high}


class RoutingConfigApi(APIView):
    """The review-queue thresholds. PATCH (admins) changes some of them; new queue items
    use the new values."""

    permission_classes = [Roles(GET=EVERYONE, PATCH=ADMINS)]

    class RoutingConfigUpdateSerializer(InputSerializer):
        # The service's own bounds (annotation/services/routing.py), so the schema states
        # them and a value out of range is refused here, naming the field.
        confidence_threshold = serializers.FloatField(
            required=False, **_bounds("confidence_threshold")
        )
        weak_class_tpr = serializers.FloatField(required=False, **_bounds("weak_class_tpr"))
        audit_rate = serializers.FloatField(required=False, **_bounds("audit_rate"))
        strategy = Choice(choices=list(active_learning.STRATEGIES), required=False)
        lease_seconds = serializers.IntegerField(required=False, **_bounds("lease_seconds"))
        retrain_min_new_labels = serializers.IntegerField(
            required=False, **_bounds("retrain_min_new_labels")
        )
        retrain_every_labels = serializers.IntegerField(
            required=False,
            help_text="retrain as soon as this many new hematologist labels exist (0: off)",
            **_bounds("retrain_every_labels"),
        )
        labels_required_abnormal = serializers.IntegerField(
            required=False,
            help_text="independent reads for cells predicted abnormal (1-5)",
            **_bounds("labels_required_abnormal"),
        )
        gold_rate = serializers.FloatField(
            required=False,
            help_text="share of handed-out cells that are gold cells (0-0.5)",
            **_bounds("gold_rate"),
        )

    @extend_schema(responses=RoutingConfigSerializer)
    def get(self, request: Request) -> Response:
        return Response(RoutingConfigSerializer(routing_config_get()).data)

    @extend_schema(request=RoutingConfigUpdateSerializer, responses=RoutingConfigSerializer)
    def patch(self, request: Request) -> Response:
        data = self.RoutingConfigUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        fields: dict[str, Any] = dict(data.validated_data)
        config = routing_config_update(user=request_user(request), **fields)
        return Response(RoutingConfigSerializer(config).data)
