"""The review queue: take the next cell (a lease), submit a label, skip, release (one
item, or all a screen holds), flag, and the counts. The lease rules live in
annotation/services/review_queue.py."""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch
from drf_spectacular.utils import OpenApiResponse, PolymorphicProxySerializer, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation.api.cells import CellSerializer, LabelSerializer, api_url
from annotation.api.common import Diff14Field, InputSerializer, no_input, request_user
from annotation.api.permissions import EVERYONE, LABELLERS, Roles
from annotation.api.schema import error_responses
from annotation.models import CellImage, Label, Prediction, ReviewItem
from annotation.selectors.review_queue import review_queue_counts
from annotation.selectors.visibility import cell_blind, review_item_visibility
from annotation.services.review_queue import (
    review_item_flag,
    review_item_next,
    review_item_release,
    review_item_skip,
    review_item_submit,
    review_items_next,
    review_items_release,
)
from annotation.types import UserLike


class ReviewItemSerializer(serializers.ModelSerializer[ReviewItem]):
    cell = serializers.SerializerMethodField()
    suggestion = serializers.SerializerMethodField(
        help_text="the prediction of the model version that queued the cell"
    )

    class Meta:
        model = ReviewItem
        fields = [
            "id",
            "status",
            "reasons",
            "priority",
            "flagged",
            "lease_expires_at",
            "model_version",
            "suggestion",
            "cell",
        ]

    def get_cell(self, item: ReviewItem) -> dict[str, Any]:
        return dict(CellSerializer(item.cell, context=self.context).data)

    def get_suggestion(self, item: ReviewItem) -> dict[str, Any] | None:
        return item_suggestion(item)


def item_suggestion(item: ReviewItem) -> dict[str, Any] | None:
    """The prediction of the model version that queued the cell (prefetched)."""
    if item.model_version_id is None:
        return None
    p = next(
        (p for p in item.cell.predictions.all() if p.model_version_id == item.model_version_id),
        None,
    )
    if p is None:
        return None
    return {
        "top_code": p.top_code,
        "confidence": p.confidence,
        "margin": p.margin,
        "probabilities": dict(zip(p.model_version.class_codes, p.probabilities, strict=False)),
    }


_DATETIME = serializers.DateTimeField()  # DRF's own output format, used unbound


def _when(value: Any) -> str | None:
    return _DATETIME.to_representation(value) if value else None


def label_payload(label: Label) -> dict[str, Any]:
    """What ``LabelSerializer(label).data`` gives, built directly (see below)."""
    return {
        "id": label.pk,
        "cell": label.cell_id,
        "code": label.code,
        "source": label.source,
        "annotator": label.annotator.username if label.annotator else None,
        "created_at": _when(label.created_at),
        "supersedes": label.supersedes_id,
    }


def review_item_payload(item: ReviewItem, context: dict[str, Any]) -> dict[str, Any]:
    """What ``ReviewItemSerializer(item).data`` gives, for an item prepared by
    ``_item_with_cell``, built directly: DRF's model serializers derive their fields
    from the model on every instantiation, which was a seventh of the web server's CPU
    under the queue benchmark (py-spy) for the five nested serializers of one 'next'.
    The serializer stays the schema; a test holds the two equal for every kind of item
    (tests/annotation/api/test_queue_and_models.py)."""
    cell = item.cell
    label = cell.current_label
    active = getattr(cell, "active_predictions", [])
    prediction = active[0] if active else None
    return {
        "id": item.pk,
        "status": item.status,
        "reasons": item.reasons,
        "priority": item.priority,
        "flagged": item.flagged,
        "lease_expires_at": _when(item.lease_expires_at),
        "model_version": item.model_version_id,
        "suggestion": item_suggestion(item),
        "cell": {
            "id": cell.pk,
            "case": cell.case_id,
            "case_accession": cell.case.accession_id,
            "image_url": api_url(context, "api:cell-image", cell_id=cell.pk),
            "thumbnail_url": api_url(context, "api:cell-thumbnail", cell_id=cell.pk),
            "width": cell.width,
            "height": cell.height,
            "original_filename": cell.original_filename,
            "source_class_name": cell.source_class_name,
            "has_label_conflict": cell.has_label_conflict,
            "processing": cell.processing,
            "label": None if label is None else label_payload(label),
            "prediction": None
            if prediction is None
            else {
                "model_version": prediction.model_version_id,
                "model_version_name": prediction.model_version.name,
                "top_code": prediction.top_code,
                "confidence": prediction.confidence,
            },
            "queue": {
                "id": item.pk,
                "status": item.status,
                "reasons": item.reasons,
                "priority": item.priority,
                "flagged": item.flagged,
                "created_at": _when(item.created_at),
                "closed_at": _when(item.closed_at),
            },
            "created_at": _when(cell.created_at),
        },
    }


def _item_with_cell(item: ReviewItem, user: UserLike) -> ReviewItem:
    item.cell = (
        CellImage.objects.select_related("case", "current_label__annotator")
        .prefetch_related(
            Prefetch(
                "predictions",
                queryset=Prediction.objects.select_related("model_version").defer(
                    "features", "model_version__metrics", "model_version__training_snapshot"
                ),
            )
        )
        .get(pk=item.cell_id)
    )
    # What the holder may see: a gold item looks like an ordinary one, an independent
    # read shows no label (annotation/selectors/visibility.py).
    cell_blind(item.cell, review_item_visibility(user=user, item=item))
    item.cell.open_review_items = [item]  # type: ignore[attr-defined]
    item.cell.active_predictions = [  # type: ignore[attr-defined]
        p for p in item.cell.predictions.all() if p.model_version.status == "active"
    ]
    return item


class ReviewNextApi(APIView):
    """Lease the next cell to review (or renew the caller's current lease). 204 when the
    queue holds nothing for the caller. With ``{"count": n}`` (1..10) up to n leases at
    once, so a browser can prefetch: ``{"items": [...]}``, the caller's live leases
    first."""

    permission_classes = [Roles(POST=LABELLERS)]

    class NextInputSerializer(InputSerializer):
        count = serializers.IntegerField(min_value=1, max_value=10, required=False)
        case = serializers.IntegerField(
            min_value=1, required=False, help_text="only cells of this case (its id)"
        )

    class NextManyOutputSerializer(serializers.Serializer):
        items = ReviewItemSerializer(many=True)

    @extend_schema(
        request=NextInputSerializer,
        responses={
            200: PolymorphicProxySerializer(
                component_name="ReviewNextResponse",
                serializers=[ReviewItemSerializer, NextManyOutputSerializer],
                resource_type_field_name=None,
            ),
            204: OpenApiResponse(description="queue empty"),
        },
    )
    def post(self, request: Request) -> Response:
        # An empty body is `{}` here; a JSON `null` (or any non-object) is refused.
        data = self.NextInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        count = data.validated_data.get("count")
        case_id = data.validated_data.get("case")
        context = {"request": request}
        user = request_user(request)
        if count is not None:
            items = review_items_next(user=user, count=count, case_id=case_id)
            return Response(
                {"items": [review_item_payload(_item_with_cell(i, user), context) for i in items]}
            )
        if case_id is not None:
            item = next(iter(review_items_next(user=user, count=1, case_id=case_id)), None)
        else:
            item = review_item_next(user=user)
        if item is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(review_item_payload(_item_with_cell(item, user), context))


class ReviewSubmitApi(APIView):
    """Label the leased cell and close its item (409 if the lease is not the caller's)."""

    permission_classes = [Roles(POST=LABELLERS)]

    class SubmitInputSerializer(InputSerializer):
        code = Diff14Field()

    @extend_schema(
        request=SubmitInputSerializer, responses={201: LabelSerializer, **error_responses(409)}
    )
    def post(self, request: Request, item_id: int) -> Response:
        data = self.SubmitInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        label = review_item_submit(
            item_id=item_id, user=request_user(request), code=data.validated_data["code"]
        )
        return Response(label_payload(label), status=status.HTTP_201_CREATED)


class ReviewSkipApi(APIView):
    permission_classes = [Roles(POST=LABELLERS)]

    @extend_schema(request=None, responses={204: None, **error_responses(409)})
    def post(self, request: Request, item_id: int) -> Response:
        no_input(request)
        review_item_skip(item_id=item_id, user=request_user(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


class ReviewReleaseApi(APIView):
    permission_classes = [Roles(POST=LABELLERS)]

    @extend_schema(request=None, responses={204: None, **error_responses(409)})
    def post(self, request: Request, item_id: int) -> Response:
        no_input(request)
        review_item_release(item_id=item_id, user=request_user(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


class ReviewReleaseManyApi(APIView):
    """Give back every lease a screen holds in one call (the labelling screen sends it when
    it is left, and retries it). Items the caller no longer holds are ignored, so a retry
    after a lost answer is harmless; ``released`` says which were given back."""

    permission_classes = [Roles(POST=LABELLERS)]

    class ReleaseManyInputSerializer(InputSerializer):
        item_ids = serializers.ListField(
            child=serializers.IntegerField(min_value=1), max_length=100, allow_empty=True
        )

    class ReleaseManyOutputSerializer(serializers.Serializer):
        released = serializers.ListField(child=serializers.IntegerField())

    @extend_schema(request=ReleaseManyInputSerializer, responses={200: ReleaseManyOutputSerializer})
    def post(self, request: Request) -> Response:
        data = self.ReleaseManyInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        released = review_items_release(
            item_ids=data.validated_data["item_ids"], user=request_user(request)
        )
        return Response({"released": released})


class ReviewFlagApi(APIView):
    permission_classes = [Roles(POST=LABELLERS)]

    class FlagInputSerializer(InputSerializer):
        flagged = serializers.BooleanField(default=True)

    @extend_schema(
        request=FlagInputSerializer,
        responses={200: ReviewItemSerializer, **error_responses(409)},
    )
    def post(self, request: Request, item_id: int) -> Response:
        data = self.FlagInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        item = review_item_flag(
            item_id=item_id, user=request_user(request), flagged=data.validated_data["flagged"]
        )
        return Response(
            ReviewItemSerializer(
                _item_with_cell(item, request_user(request)), context={"request": request}
            ).data
        )


class QueueCountsSerializer(serializers.Serializer):
    queued = serializers.IntegerField()
    leased = serializers.IntegerField()
    by_reason = serializers.DictField(child=serializers.IntegerField())
    by_class = serializers.DictField(child=serializers.IntegerField())


class ReviewCountsApi(APIView):
    permission_classes = [Roles(GET=EVERYONE)]

    @extend_schema(responses=QueueCountsSerializer)
    def get(self, request: Request) -> Response:
        return Response(review_queue_counts())
