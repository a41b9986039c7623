"""Dataset export: streamed zip for small exports, an ExportJob (Celery) for large ones."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.http import StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.urls import reverse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation.api.common import (
    Choice,
    Diff14Field,
    ErrorSerializer,
    paginated,
    paginated_response,
    query_input,
    request_user,
    storage_file_response,
)
from annotation.api.permissions import EXPORTERS, Roles
from annotation.errors import ApplicationError
from annotation.models import ExportJob, Label
from annotation.selectors.exports import export_job_get, export_job_list
from annotation.services.exports import (
    FORMATS,
    LABEL_STATUSES,
    ExportFilters,
    export_count,
    export_filename,
    export_job_create,
    export_stream,
    export_sync_limit,
)


class ExportJobSerializer(serializers.ModelSerializer[ExportJob]):
    """The output of every export-job endpoint (and of a 202 export)."""

    download_url = serializers.SerializerMethodField()
    status_url = serializers.SerializerMethodField()
    requested_by = serializers.CharField(source="requested_by.username", allow_null=True)

    class Meta:
        model = ExportJob
        fields = [
            "id",
            "format",
            "params",
            "status",
            "progress",
            "n_cells",
            "error",
            "requested_by",
            "created_at",
            "finished_at",
            "status_url",
            "download_url",
        ]

    def _abs(self, path: str) -> str:
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request is not None else path

    def get_status_url(self, job: ExportJob) -> str:
        return self._abs(reverse("api:export-job-detail", kwargs={"job_id": job.pk}))

    def get_download_url(self, job: ExportJob) -> str | None:
        if job.status != ExportJob.Status.SUCCEEDED or not job.file:
            return None
        return self._abs(reverse("api:export-job-download", kwargs={"job_id": job.pk}))


def _to_async(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Under ASGI, Django would buffer a synchronous iterator whole before sending it;
    pulling each piece through sync_to_async streams it instead."""
    sentinel = b""

    def pull() -> bytes:
        return next(chunks, sentinel)

    async def gen() -> AsyncIterator[bytes]:
        while True:
            chunk = await sync_to_async(pull, thread_sensitive=True)()
            if chunk is sentinel:
                return
            yield chunk

    return gen()


class ExportApi(APIView):
    """The labelled dataset as a zip (imagefolder, csv or coco; see the README inside).

    Up to WBC_EXPORT_SYNC_MAX_CELLS cells (or unless ``mode=job``) the zip is streamed
    (200, application/zip). Larger exports answer 202 with an export job whose
    ``status_url`` shows progress and, when done, a ``download_url``.
    """

    permission_classes = [Roles(GET=EXPORTERS)]

    class ExportParamsSerializer(serializers.Serializer):
        format = Choice(choices=FORMATS, default="imagefolder")
        case = serializers.IntegerField(required=False, min_value=1, help_text="case id")
        label = Diff14Field(required=False, help_text="only cells currently labelled so")  # type: ignore[assignment]
        label_source = Choice(choices=Label.Source.choices, required=False)
        label_status = Choice(choices=LABEL_STATUSES, default="labelled")
        since = serializers.DateTimeField(
            required=False,
            help_text="labels given (or unlabelled cells imported) at or after this time; "
            "a date means its midnight UTC",
            input_formats=["iso-8601", "%Y-%m-%d"],
        )
        mode = Choice(
            choices=["auto", "job"],
            default="auto",
            help_text="job: always build the zip in the background",
        )

    @extend_schema(
        parameters=[ExportParamsSerializer],
        responses={
            (200, "application/zip"): OpenApiResponse(OpenApiTypes.BINARY, description="zip"),
            202: ExportJobSerializer,
            400: ErrorSerializer,
        },
    )
    def get(self, request: Request) -> HttpResponseBase:
        params = self.ExportParamsSerializer(data=query_input(request))
        params.is_valid(raise_exception=True)
        data = params.validated_data
        since = data.get("since")
        if isinstance(since, datetime) and timezone.is_naive(since):
            since = timezone.make_aware(since)
        filters = ExportFilters(
            case_id=data.get("case"),
            label=data.get("label"),
            label_source=data.get("label_source"),
            label_status=data["label_status"],
            since=since,
        )
        fmt = data["format"]
        if data["mode"] == "job" or export_count(filters=filters) > export_sync_limit():
            job = export_job_create(fmt=fmt, filters=filters, user=request_user(request))
            body = ExportJobSerializer(job, context={"request": request}).data
            return Response(body, status=status.HTTP_202_ACCEPTED)
        chunks = export_stream(fmt=fmt, filters=filters)
        content: Any = _to_async(chunks) if isinstance(request._request, ASGIRequest) else chunks
        response = StreamingHttpResponse(content, content_type="application/zip")
        response["Content-Disposition"] = f'attachment; filename="{export_filename(fmt)}"'
        return response


class ExportJobListApi(APIView):
    """Export jobs, newest first: a user's own, or every job for an admin."""

    permission_classes = [Roles(GET=EXPORTERS)]

    @extend_schema(operation_id="export_jobs_list", responses=paginated(ExportJobSerializer))
    def get(self, request: Request) -> Response:
        return paginated_response(
            request=request,
            view=self,
            queryset=export_job_list(user=request_user(request)),
            serializer_class=ExportJobSerializer,
        )


class ExportJobDetailApi(APIView):
    """One export job: its status, progress and, once it succeeded, the download URL."""

    permission_classes = [Roles(GET=EXPORTERS)]

    @extend_schema(responses=ExportJobSerializer)
    def get(self, request: Request, job_id: int) -> Response:
        job = export_job_get(user=request_user(request), job_id=job_id)
        return Response(ExportJobSerializer(job, context={"request": request}).data)


class ExportJobDownloadApi(APIView):
    """The zip of a succeeded export job; 409 while it is queued, running or failed."""

    permission_classes = [Roles(GET=EXPORTERS)]

    @extend_schema(
        responses={
            (200, "application/zip"): OpenApiResponse(OpenApiTypes.BINARY, description="zip"),
            404: ErrorSerializer,
            409: ErrorSerializer,
        }
    )
    def get(self, request: Request, job_id: int) -> HttpResponseBase:
        job = export_job_get(user=request_user(request), job_id=job_id)
        if job.status != ExportJob.Status.SUCCEEDED or not job.file:
            raise ApplicationError(
                f"Export job {job.pk} is {job.status}"
                + (f" ({job.error})" if job.error else "")
                + "; the download exists once it has succeeded.",
                code="not_ready",
                status=409,
            )
        return storage_file_response(
            job.file.name, filename=f"wbc-export-{job.format}-{job.pk}.zip"
        )
