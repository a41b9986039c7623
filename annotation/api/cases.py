"""Cases: list, create, detail with the differential (sign-off and reports:
annotation/api/review.py)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation.api.common import (
    Choice,
    InputSerializer,
    JSONObjectField,
    paginated,
    paginated_response,
    query_input,
    request_user,
)
from annotation.api.permissions import ADMINS, EVERYONE, Roles
from annotation.api.schema import error_responses
from annotation.models import Case
from annotation.selectors.cases import CaseFilters, case_differential, case_get, case_list
from annotation.services.cases import case_create


class CaseSerializer(serializers.ModelSerializer[Case]):
    class Meta:
        model = Case
        fields = [
            "id",
            "accession_id",
            "patient_pseudonym",
            "diagnosis",
            "source",
            "metadata",
            "labels_required",
            "status",
            "created_at",
            "updated_at",
        ]


class CaseListItemSerializer(CaseSerializer):
    """A row of the case list, with the counts ``case_list`` annotates (only there)."""

    n_cells = serializers.IntegerField(read_only=True)
    n_labelled = serializers.IntegerField(read_only=True)

    class Meta(CaseSerializer.Meta):
        fields = [*CaseSerializer.Meta.fields, "n_cells", "n_labelled"]


class DifferentialClassSerializer(serializers.Serializer):
    code = serializers.CharField()
    name = serializers.CharField()
    group = serializers.CharField()
    count = serializers.IntegerField(help_text="reviewed cells: in the portal plus imported")
    reviewed_in_portal = serializers.IntegerField(help_text="labelled by a person here")
    imported = serializers.IntegerField(help_text="imported labels (analyser, technologist)")
    model_only = serializers.IntegerField(
        help_text="no label: counted by the active model's class, not in count"
    )
    percent = serializers.FloatField(allow_null=True, help_text="of the reviewed WBC")
    model_only_percent = serializers.FloatField(allow_null=True, help_text="of the model-only WBC")
    per_100_wbc = serializers.FloatField(allow_null=True)


class FlagSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class DifferentialSerializer(serializers.Serializer):
    cells_total = serializers.IntegerField()
    reviewed = serializers.IntegerField()
    reviewed_in_portal = serializers.IntegerField()
    imported = serializers.IntegerField()
    imported_source = serializers.CharField(
        allow_null=True, help_text="where the imported labels came from (the case's source)"
    )
    model_only = serializers.IntegerField()
    unclassified = serializers.IntegerField()
    unidentified = serializers.IntegerField(
        help_text="cells without a label that are queued or that the model is unsure of"
    )
    open_review_items = serializers.IntegerField()
    open_labelled_cells = serializers.IntegerField()
    open_disagreements = serializers.IntegerField()
    label_conflicts = serializers.IntegerField()
    wbc_counted = serializers.IntegerField(help_text="reviewed white cells")
    model_only_wbc = serializers.IntegerField()
    model_version = serializers.CharField(allow_null=True)
    confidence_threshold = serializers.FloatField()
    classes = DifferentialClassSerializer(many=True)
    totals = serializers.DictField()
    flags = FlagSerializer(many=True)


class CaseDetailSerializer(CaseSerializer):
    differential = DifferentialSerializer(read_only=True)

    class Meta(CaseSerializer.Meta):
        fields = [*CaseSerializer.Meta.fields, "differential"]


class CaseListCreateApi(APIView):
    """GET: cases, newest first, filtered. POST: a new, empty case (admins)."""

    permission_classes = [Roles(GET=EVERYONE, POST=ADMINS)]

    class FilterSerializer(serializers.Serializer):
        status = Choice(choices=Case.Status.choices, required=False)
        diagnosis = serializers.CharField(required=False, help_text="part of the diagnosis")
        created_from = serializers.DateField(required=False, help_text="YYYY-MM-DD, inclusive")
        created_to = serializers.DateField(required=False, help_text="YYYY-MM-DD, inclusive")
        search = serializers.CharField(required=False, help_text="part of the accession id")

    class CaseCreateInputSerializer(InputSerializer):
        accession_id = serializers.CharField(max_length=128)
        patient_pseudonym = serializers.CharField(
            max_length=128, required=False, allow_blank=True, default=""
        )
        diagnosis = serializers.CharField(
            max_length=255, required=False, allow_blank=True, default=""
        )
        metadata = JSONObjectField(required=False, default=dict)
        labels_required = serializers.IntegerField(
            min_value=1, max_value=5, required=False, default=1,
            help_text="independent reads each queued cell of the case needs (2 = double reading)",
        )  # fmt: skip

    @extend_schema(
        operation_id="cases_list",
        parameters=[FilterSerializer],
        responses={200: paginated(CaseListItemSerializer)},
    )
    def get(self, request: Request) -> Response:
        params = self.FilterSerializer(data=query_input(request))
        params.is_valid(raise_exception=True)
        queryset = case_list(
            filters=CaseFilters(**params.validated_data), user=request_user(request)
        )
        return paginated_response(
            request=request, view=self, queryset=queryset, serializer_class=CaseListItemSerializer
        )

    @extend_schema(
        request=CaseCreateInputSerializer,
        responses={201: CaseSerializer, **error_responses(409)},
    )
    def post(self, request: Request) -> Response:
        data = self.CaseCreateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        case = case_create(user=request_user(request), source="api", **data.validated_data)
        return Response(CaseSerializer(case).data, status=status.HTTP_201_CREATED)


class CaseDetailApi(APIView):
    """A case with its differential (see annotation/selectors/cases.py for the rules)."""

    permission_classes = [Roles(GET=EVERYONE)]

    @extend_schema(responses=CaseDetailSerializer)
    def get(self, request: Request, case_id: int) -> Response:
        case = case_get(case_id=case_id)
        differential = case_differential(case=case, user=request_user(request))
        return Response({**CaseSerializer(case).data, "differential": differential})
