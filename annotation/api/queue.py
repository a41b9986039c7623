"""The review queue: take the next cell (a lease), submit a label, skip, release, flag,
and the counts. The lease rules live in annotation/services/review_queue.py."""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch
from drf_spectacular.utils import OpenApiResponse, PolymorphicProxySerializer, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation.api.cells import CellSerializer, LabelSerializer
from annotation.api.common import Diff14Field, request_user
from annotation.api.gold import gold_item_disguise
from annotation.api.permissions import EVERYONE, LABELLERS, Roles
from annotation.models import CellImage, Prediction, ReviewItem
from annotation.selectors.review_queue import review_queue_counts
from annotation.services.review_queue import (
    review_item_flag,
    review_item_next,
    review_item_release,
    review_item_skip,
    review_item_submit,
    review_items_next,
)


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


def _item_with_cell(item: ReviewItem) -> ReviewItem:
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
    gold_item_disguise(item)
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

    class NextInputSerializer(serializers.Serializer):
        count = serializers.IntegerField(min_value=1, max_value=10, required=False)

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
        data = self.NextInputSerializer(data=request.data or {})
        data.is_valid(raise_exception=True)
        count = data.validated_data.get("count")
        context = {"request": request}
        if count is not None:
            items = review_items_next(user=request_user(request), count=count)
            return Response(
                {
                    "items": [
                        ReviewItemSerializer(_item_with_cell(i), context=context).data
                        for i in items
                    ]
                }
            )
        item = review_item_next(user=request_user(request))
        if item is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(ReviewItemSerializer(_item_with_cell(item), context=context).data)


class ReviewSubmitApi(APIView):
    """Label the leased cell and close its item (409 if the lease is not the caller's)."""

    permission_classes = [Roles(POST=LABELLERS)]

    class SubmitInputSerializer(serializers.Serializer):
        code = Diff14Field()

    @extend_schema(request=SubmitInputSerializer, responses={201: LabelSerializer})
    def post(self, request: Request, item_id: int) -> Response:
        data = self.SubmitInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        label = review_item_submit(
            item_id=item_id, user=request_user(request), code=data.validated_data["code"]
        )
        return Response(LabelSerializer(label).data, status=status.HTTP_201_CREATED)


class ReviewSkipApi(APIView):
    permission_classes = [Roles(POST=LABELLERS)]

    @extend_schema(request=None, responses={204: None})
    def post(self, request: Request, item_id: int) -> Response:
        review_item_skip(item_id=item_id, user=request_user(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


class ReviewReleaseApi(APIView):
    permission_classes = [Roles(POST=LABELLERS)]

    @extend_schema(request=None, responses={204: None})
    def post(self, request: Request, item_id: int) -> Response:
        review_item_release(item_id=item_id, user=request_user(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


class ReviewFlagApi(APIView):
    permission_classes = [Roles(POST=LABELLERS)]

    class FlagInputSerializer(serializers.Serializer):
        flagged = serializers.BooleanField(default=True)

    @extend_schema(request=FlagInputSerializer, responses={200: ReviewItemSerializer})
    def post(self, request: Request, item_id: int) -> Response:
        data = self.FlagInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        item = review_item_flag(
            item_id=item_id, user=request_user(request), flagged=data.validated_data["flagged"]
        )
        return Response(
            ReviewItemSerializer(_item_with_cell(item), context={"request": request}).data
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
