"""Cells: list, detail, the image files, and upload."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.files.uploadhandler import SkipFile, TemporaryFileUploadHandler
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    extend_schema_serializer,
)
from rest_framework import serializers, status
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation.api.common import (
    Choice,
    Diff14Field,
    ErrorSerializer,
    InputSerializer,
    paginated,
    paginated_response,
    query_input,
    request_user,
    storage_file_response,
)
from annotation.api.permissions import ADMINS, EVERYONE, Roles
from annotation.errors import ApplicationError
from annotation.models import CellImage, Label, Prediction, ReviewItem, Segmentation
from annotation.selectors.cells import (
    LABEL_STATUSES,
    CellFilters,
    cell_get,
    cell_image_file_get,
    cell_list,
    cell_thumbnail_jpeg,
    segmentation_get,
)
from annotation.services.uploads import cells_upload
from mlworker.taxonomy import CODES


def api_url(context: Mapping[str, Any], name: str, **kwargs: Any) -> str:
    path = reverse(name, kwargs=kwargs)
    request = context.get("request")
    return request.build_absolute_uri(path) if request is not None else path


class LabelSerializer(serializers.ModelSerializer[Label]):
    annotator = serializers.SerializerMethodField()

    class Meta:
        model = Label
        fields = ["id", "cell", "code", "source", "annotator", "created_at", "supersedes"]

    def get_annotator(self, label: Label) -> str | None:
        return label.annotator.username if label.annotator_id and label.annotator else None


class PredictionBriefSerializer(serializers.ModelSerializer[Prediction]):
    model_version_name = serializers.CharField(source="model_version.name")

    class Meta:
        model = Prediction
        fields = ["model_version", "model_version_name", "top_code", "confidence"]


class PredictionSerializer(serializers.ModelSerializer[Prediction]):
    model_version_name = serializers.CharField(source="model_version.name")
    model_version_status = serializers.CharField(source="model_version.status")
    probabilities = serializers.SerializerMethodField()

    class Meta:
        model = Prediction
        fields = [
            "model_version",
            "model_version_name",
            "model_version_status",
            "top_code",
            "confidence",
            "margin",
            "entropy",
            "probabilities",
            "created_at",
        ]

    @extend_schema_field(serializers.DictField(child=serializers.FloatField()))
    def get_probabilities(self, prediction: Prediction) -> dict[str, float]:
        codes = prediction.model_version.class_codes or list(CODES)
        return dict(zip(codes, prediction.probabilities, strict=False))


class ReviewItemBriefSerializer(serializers.ModelSerializer[ReviewItem]):
    class Meta:
        model = ReviewItem
        fields = ["id", "status", "reasons", "priority", "flagged", "created_at", "closed_at"]


class SegmentationSerializer(serializers.ModelSerializer[Segmentation]):
    mask_url = serializers.SerializerMethodField()

    class Meta:
        model = Segmentation
        fields = [
            "id",
            "method_version",
            "status",
            "quality",
            "failure_reason",
            "wbc_area",
            "nucleus_area",
            "mask_url",
            "created_at",
        ]

    def get_mask_url(self, seg: Segmentation) -> str | None:
        if not seg.mask:
            return None
        return api_url(self.context, "api:segmentation-mask", segmentation_id=seg.pk)


class CellSerializer(serializers.ModelSerializer[CellImage]):
    case_accession = serializers.CharField(source="case.accession_id")
    image_url = serializers.SerializerMethodField()
    thumbnail_url = serializers.SerializerMethodField()
    label = LabelSerializer(source="current_label", allow_null=True)  # type: ignore[assignment]
    prediction = serializers.SerializerMethodField(help_text="the active model's prediction")
    queue = serializers.SerializerMethodField(help_text="the open review item, if any")

    class Meta:
        model = CellImage
        fields = [
            "id",
            "case",
            "case_accession",
            "image_url",
            "thumbnail_url",
            "width",
            "height",
            "original_filename",
            "source_class_name",
            "has_label_conflict",
            "processing",
            "label",
            "prediction",
            "queue",
            "created_at",
        ]
        # Blinding (annotation/selectors/visibility.py): what a reader may not see is
        # emptied by the selector, so every field keeps its type for every role.
        extra_kwargs = {
            "original_filename": {
                "help_text": "the file's name at import; empty except for admins and data "
                "scientists (PBC-style names carry the class)"
            },
        }

    def get_image_url(self, cell: CellImage) -> str:
        return api_url(self.context, "api:cell-image", cell_id=cell.pk)

    def get_thumbnail_url(self, cell: CellImage) -> str:
        return api_url(self.context, "api:cell-thumbnail", cell_id=cell.pk)

    @extend_schema_field(PredictionBriefSerializer(allow_null=True))
    def get_prediction(self, cell: CellImage) -> dict[str, Any] | None:
        active = getattr(cell, "active_predictions", None)
        if active is None:
            active = [p for p in cell.predictions.all() if p.model_version.status == "active"]
        return PredictionBriefSerializer(active[0]).data if active else None

    @extend_schema_field(ReviewItemBriefSerializer(allow_null=True))
    def get_queue(self, cell: CellImage) -> dict[str, Any] | None:
        items = getattr(cell, "open_review_items", None)
        if items is None:
            items = [i for i in cell.review_items.all() if i.status in ("queued", "leased")]
        return ReviewItemBriefSerializer(items[0]).data if items else None


class CellDetailSerializer(CellSerializer):
    predictions = PredictionSerializer(many=True, help_text="one per model version")
    segmentations = SegmentationSerializer(many=True)
    labels = LabelSerializer(
        many=True,
        source="label_history",
        help_text="label history, oldest first; empty while the reader is blinded on the cell",
    )
    review_items = ReviewItemBriefSerializer(many=True, source="review_history")

    class Meta(CellSerializer.Meta):
        fields = [
            *CellSerializer.Meta.fields,
            "sha256",
            "source_labels",
            "processing_error",
            "predictions",
            "segmentations",
            "labels",
            "review_items",
        ]


class CellListApi(APIView):
    permission_classes = [Roles(GET=EVERYONE)]

    class FilterSerializer(serializers.Serializer):
        case = serializers.IntegerField(required=False, min_value=1, help_text="case id")
        predicted = Diff14Field(required=False, help_text="the active model's top class")
        label = Diff14Field(required=False, help_text="the current label's class")  # type: ignore[assignment]
        label_status = Choice(choices=LABEL_STATUSES, required=False)
        label_source = Choice(choices=Label.Source.choices, required=False)
        confidence_min = serializers.FloatField(required=False, min_value=0, max_value=1)
        confidence_max = serializers.FloatField(required=False, min_value=0, max_value=1)
        queue_reason = serializers.CharField(
            required=False, max_length=64, help_text="a reason of the cell's open review item"
        )

    @extend_schema(
        operation_id="cells_list",
        parameters=[FilterSerializer],
        responses=paginated(CellSerializer),
    )
    def get(self, request: Request) -> Response:
        params = self.FilterSerializer(data=query_input(request))
        params.is_valid(raise_exception=True)
        data = dict(params.validated_data)
        data["case_id"] = data.pop("case", None)
        return paginated_response(
            request=request,
            view=self,
            queryset=cell_list(filters=CellFilters(**data), user=request_user(request)),
            serializer_class=CellSerializer,
        )


class CellDetailApi(APIView):
    permission_classes = [Roles(GET=EVERYONE)]

    @extend_schema(responses=CellDetailSerializer)
    def get(self, request: Request, cell_id: int) -> Response:
        cell = cell_get(cell_id=cell_id, user=request_user(request))
        return Response(CellDetailSerializer(cell, context={"request": request}).data)


_IMAGE_RESPONSE = {
    (200, "image/*"): OpenApiResponse(OpenApiTypes.BINARY, description="the image file"),
    404: ErrorSerializer,
}


class CellImageApi(APIView):
    """The original image file, to token clients as well as browser sessions."""

    permission_classes = [Roles(GET=EVERYONE)]

    @extend_schema(responses=_IMAGE_RESPONSE)
    def get(self, request: Request, cell_id: int) -> HttpResponseBase:
        cell = cell_image_file_get(cell_id=cell_id)
        response = storage_file_response(cell.image.name)
        response["Cache-Control"] = "private, max-age=86400, immutable"  # content-addressed
        return response


class CellThumbnailApi(APIView):
    permission_classes = [Roles(GET=EVERYONE)]

    @extend_schema(responses=_IMAGE_RESPONSE)
    def get(self, request: Request, cell_id: int) -> HttpResponseBase:
        cell = cell_image_file_get(cell_id=cell_id)
        try:
            data = cell_thumbnail_jpeg(cell=cell)
        except FileNotFoundError:
            raise ApplicationError(
                "The cell's image is missing from storage.", code="file_missing", status=404
            ) from None
        response = HttpResponse(data, content_type="image/jpeg")
        response["Cache-Control"] = "private, max-age=86400"
        return response


class SegmentationMaskApi(APIView):
    """The mask PNG: 0 background, 128 cytoplasm, 255 nucleus."""

    permission_classes = [Roles(GET=EVERYONE)]

    @extend_schema(responses=_IMAGE_RESPONSE)
    def get(self, request: Request, segmentation_id: int) -> HttpResponseBase:
        seg = segmentation_get(segmentation_id=segmentation_id)
        if not seg.mask:
            raise ApplicationError(
                f"Segmentation {seg.pk} has no mask ({seg.status}: "
                f"{seg.failure_reason or 'no reason recorded'}).",
                code="no_mask",
                status=404,
            )
        return storage_file_response(seg.mask.name)


# --- upload ------------------------------------------------------------------------------


class _SizeLimitedUploadHandler(TemporaryFileUploadHandler):
    """Streams each uploaded file to a temporary file and drops one as soon as it passes
    its size limit, so an oversized file is never held whole, in memory or on disk."""

    def __init__(self, request: HttpRequest | None = None) -> None:
        super().__init__(request)
        self.too_large: list[tuple[str, str]] = []
        self._seen = 0
        self._limit = 0

    def new_file(self, field_name: str, file_name: str, *args: Any, **kwargs: Any) -> None:
        super().new_file(field_name, file_name, *args, **kwargs)
        self._seen = 0
        is_zip = file_name.lower().endswith(".zip")
        self._limit = settings.WBC_MAX_ZIP_BYTES if is_zip else settings.WBC_MAX_UPLOAD_BYTES

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        self._seen += len(raw_data)
        if self._seen > self._limit:
            kind = "zip" if self.file_name and self.file_name.lower().endswith(".zip") else "image"
            self.too_large.append(
                (
                    self.file_name or "?",
                    f"file is over the per-{kind} limit of {self._limit} bytes",
                )
            )
            self.file.close()
            raise SkipFile()
        return super().receive_data_chunk(raw_data, start)


class UploadSummarySerializer(serializers.Serializer):
    layout = serializers.CharField()
    new_cells = serializers.IntegerField()
    labelled = serializers.IntegerField()
    conflicting = serializers.IntegerField()
    duplicates = serializers.IntegerField()
    skipped = serializers.IntegerField()
    skipped_files = serializers.ListField(child=serializers.DictField())
    existing_cells_labelled = serializers.IntegerField()
    out_of_taxonomy = serializers.DictField()
    unknown_class_names = serializers.DictField()
    cases_created = serializers.IntegerField()
    line = serializers.CharField()
    processing_queued = serializers.BooleanField(
        help_text="false when Redis was down: the cells are stored, not yet processed"
    )
    warning = serializers.CharField(required=False, help_text="what to do about it")
    cell_ids = serializers.ListField(child=serializers.IntegerField())


class CellUploadApi(APIView):
    """Upload one or many images, or one zip, exactly as ``import_cells`` reads them.

    Images go into one case (``case``, default ``upload-<date>``), unlabelled unless
    ``label`` names their 14-Diff class. A zip may hold any layout import_cells reads.
    Files that cannot be used are skipped with their reason; when every file is
    rejected the answer is 400 with the reasons.
    """

    permission_classes = [Roles(POST=ADMINS)]
    parser_classes = [MultiPartParser]

    class UploadInputSerializer(InputSerializer):
        files = serializers.ListField(
            child=serializers.FileField(allow_empty_file=True),
            allow_empty=True,
            required=False,
            help_text="images (JPEG, PNG, BMP, TIFF) or one .zip",
        )
        case = serializers.CharField(
            required=False, max_length=128, help_text="accession id of the case to add to"
        )
        label = Diff14Field(required=False, help_text="14-Diff class of every uploaded image")  # type: ignore[assignment]

    @extend_schema_serializer(component_name="UploadInput")
    class UploadSchemaSerializer(UploadInputSerializer):
        """The body as the schema shows it: at least one file. The view leaves that check
        to ``cells_upload``, whose 400 ``no_files`` says what to attach."""

        files = serializers.ListField(
            child=serializers.FileField(allow_empty_file=True),
            min_length=1,
            help_text="images (JPEG, PNG, BMP, TIFF) or one .zip",
        )

    def initialize_request(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Request:
        # Before anything reads the body (CSRF checks read request.POST).
        self.upload_handler = _SizeLimitedUploadHandler(request)
        request.upload_handlers = [self.upload_handler]
        return super().initialize_request(request, *args, **kwargs)

    @extend_schema(
        request={"multipart/form-data": UploadSchemaSerializer},
        responses={201: UploadSummarySerializer, 400: ErrorSerializer},
    )
    def post(self, request: Request) -> Response:
        data = self.UploadInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        result = cells_upload(
            files=list(request.FILES.getlist("files")),
            too_large=list(self.upload_handler.too_large),
            case_name=data.validated_data.get("case"),
            label=data.validated_data.get("label"),
            user=request_user(request),
        )
        return Response(result, status=status.HTTP_201_CREATED)
