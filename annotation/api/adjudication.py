"""Double reading: the adjudication queue for senior hematologists, and agreement."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation.api.cells import LabelSerializer
from annotation.api.common import Diff14Field, InputSerializer, request_user
from annotation.api.permissions import ADJUDICATORS, ADMINS, Roles
from annotation.api.schema import error_responses
from annotation.models import ReviewItem
from annotation.roles import DATA_SCIENTIST
from annotation.selectors.adjudication import adjudication_queue
from annotation.selectors.agreement import agreement_summary
from annotation.services.review_queue import review_item_adjudicate


class AdjudicationItemSerializer(serializers.ModelSerializer[ReviewItem]):
    reads = LabelSerializer(many=True, help_text="every independent read, with its author")
    case = serializers.CharField(source="cell.case.accession_id")
    case_id = serializers.IntegerField(source="cell.case_id")
    image_url = serializers.SerializerMethodField()

    class Meta:
        model = ReviewItem
        fields = [
            "id",
            "cell",
            "case",
            "case_id",
            "image_url",
            "reasons",
            "labels_required",
            "reads",
        ]

    def get_image_url(self, item: ReviewItem) -> str:
        return f"/api/cells/{item.cell_id}/image/"


class AdjudicationListApi(APIView):
    """Cells whose independent reads disagree, waiting for a senior hematologist."""

    permission_classes = [Roles(GET=ADJUDICATORS)]

    @extend_schema(responses=AdjudicationItemSerializer(many=True))
    def get(self, request: Request) -> Response:
        return Response(AdjudicationItemSerializer(adjudication_queue(), many=True).data)


class AdjudicationDecideApi(APIView):
    """Settle a disagreement: an adjudicated label, which counts for training and export."""

    permission_classes = [Roles(POST=ADJUDICATORS)]

    class DecideInputSerializer(InputSerializer):
        code = Diff14Field()

    @extend_schema(
        request=DecideInputSerializer, responses={201: LabelSerializer, **error_responses(409)}
    )
    def post(self, request: Request, item_id: int) -> Response:
        data = self.DecideInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        label = review_item_adjudicate(
            item_id=item_id, user=request_user(request), code=data.validated_data["code"]
        )
        return Response(LabelSerializer(label).data, status=status.HTTP_201_CREATED)


class AgreementApi(APIView):
    """Cohen's kappa per pair of readers, Fleiss' kappa overall, per class and per week."""

    permission_classes = [Roles(GET=ADMINS | {DATA_SCIENTIST})]

    @extend_schema(responses={200: dict[str, Any]})
    def get(self, request: Request) -> Response:
        return Response(agreement_summary())
