"""Gold cells (admins): list, mark, retire, and how readers and models do on them. How a
gold item is shown to readers (exactly like an ordinary one) is the blinding policy,
annotation/selectors/visibility.py."""

from __future__ import annotations

from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation.api.common import Diff14Field, InputSerializer, no_input, request_user
from annotation.api.permissions import ADMINS, Roles
from annotation.api.schema import error_responses
from annotation.models import GoldCell
from annotation.selectors.gold import gold_cells_list, gold_performance
from annotation.services.gold import gold_cell_mark, gold_cell_retire


class GoldCellSerializer(serializers.ModelSerializer[GoldCell]):
    case = serializers.CharField(source="cell.case.accession_id", help_text="case accession")
    case_id = serializers.IntegerField(source="cell.case_id")
    marked_by = serializers.CharField(source="marked_by.username", allow_null=True, default=None)
    thumbnail_url = serializers.SerializerMethodField()
    current_label = serializers.CharField(
        source="cell.current_label.code",
        allow_null=True,
        default=None,
        help_text="the cell's current label, for comparison with the gold class",
    )

    class Meta:
        model = GoldCell
        fields = [
            "cell",
            "diff14",
            "note",
            "marked_by",
            "marked_at",
            "thumbnail_url",
            "case",
            "case_id",
            "current_label",
        ]

    def get_thumbnail_url(self, gold: GoldCell) -> str:
        path = reverse("api:cell-thumbnail", kwargs={"cell_id": gold.cell_id})
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request is not None else path


class GoldListCreateApi(APIView):
    """GET: the active gold cells, newest first. POST: mark a cell as gold with the
    expert's class (400 for an unknown class or a cell that is already gold)."""

    permission_classes = [Roles(GET=ADMINS, POST=ADMINS)]

    class GoldMarkInputSerializer(InputSerializer):
        cell = serializers.IntegerField(min_value=1, max_value=2**63 - 1)
        diff14 = Diff14Field(help_text="the expert's reference class")
        note = serializers.CharField(required=False, default="", allow_blank=True, max_length=2000)

    @extend_schema(operation_id="gold_list", responses=GoldCellSerializer(many=True))
    def get(self, request: Request) -> Response:
        return Response(
            GoldCellSerializer(gold_cells_list(), many=True, context={"request": request}).data
        )

    @extend_schema(
        request=GoldMarkInputSerializer,
        responses={201: GoldCellSerializer, **error_responses(404)},
    )
    def post(self, request: Request) -> Response:
        data = self.GoldMarkInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        gold = gold_cell_mark(
            user=request_user(request),
            cell_id=data.validated_data["cell"],
            diff14=data.validated_data["diff14"],
            note=data.validated_data["note"],
        )
        gold = gold_cells_list().get(pk=gold.pk)
        return Response(
            GoldCellSerializer(gold, context={"request": request}).data,
            status=status.HTTP_201_CREATED,
        )


class GoldRetireApi(APIView):
    """Retire a gold cell: no longer handed out, no longer counted (the record stays)."""

    permission_classes = [Roles(DELETE=ADMINS)]

    @extend_schema(responses={204: None})
    def delete(self, request: Request, cell_id: int) -> Response:
        no_input(request)
        gold_cell_retire(user=request_user(request), cell_id=cell_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ClassScoreSerializer(serializers.Serializer):
    n = serializers.IntegerField()
    correct = serializers.IntegerField()
    tpr = serializers.FloatField(allow_null=True)


class ReaderScoreSerializer(serializers.Serializer):
    user = serializers.CharField()
    n = serializers.IntegerField()
    correct = serializers.IntegerField()
    accuracy = serializers.FloatField(allow_null=True)
    per_class = serializers.DictField(child=ClassScoreSerializer())


class ModelScoreSerializer(serializers.Serializer):
    model_version = serializers.IntegerField()
    name = serializers.CharField()
    status = serializers.CharField()
    active = serializers.BooleanField()
    n = serializers.IntegerField()
    correct = serializers.IntegerField()
    accuracy = serializers.FloatField(allow_null=True)
    balanced_accuracy = serializers.FloatField(allow_null=True)
    per_class = serializers.DictField(child=ClassScoreSerializer())


class GoldGroupSerializer(serializers.Serializer):
    gold_cells = serializers.IntegerField()
    readers = ReaderScoreSerializer(many=True)
    models = ModelScoreSerializer(many=True)


class GoldPerformanceSerializer(serializers.Serializer):
    gold_rate = serializers.FloatField()
    gold_cells = serializers.IntegerField()
    classes = serializers.ListField(child=serializers.CharField())
    readers = ReaderScoreSerializer(many=True)
    models = ModelScoreSerializer(many=True)
    by_scanner = serializers.DictField(child=GoldGroupSerializer())
    by_stain = serializers.DictField(child=GoldGroupSerializer())


class GoldPerformanceApi(APIView):
    """Readers and model versions on the active gold cells: accuracy and per-class TPR,
    overall and per scanner and stain (from the case metadata; "unknown" otherwise)."""

    permission_classes = [Roles(GET=ADMINS)]

    @extend_schema(responses=GoldPerformanceSerializer)
    def get(self, request: Request) -> Response:
        return Response(gold_performance())
