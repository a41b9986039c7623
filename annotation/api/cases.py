"""Cases: list, create, detail with the differential, sign-off."""

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
    no_input,
    paginated,
    paginated_response,
    query_input,
    request_user,
)
from annotation.api.permissions import ADMINS, EVERYONE, LABELLERS, Roles
from annotation.api.schema import error_responses
from annotation.models import Case
from annotation.selectors.cases import CaseFilters, case_differential, case_get, case_list
from annotation.services.cases import case_create, case_signoff


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
    count = serializers.IntegerField()
    labelled = serializers.IntegerField()
    predicted = serializers.IntegerField(help_text="cells counted by the active model only")
    source = serializers.CharField(allow_null=True, help_text="label, model, mixed or null")  # type: ignore[assignment]
    percent = serializers.FloatField(allow_null=True)
    per_100_wbc = serializers.FloatField(allow_null=True)


class FlagSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class DifferentialSerializer(serializers.Serializer):
    cells_total = serializers.IntegerField()
    labelled = serializers.IntegerField()
    predicted_only = serializers.IntegerField()
    unclassified = serializers.IntegerField()
    open_review_items = serializers.IntegerField()
    label_conflicts = serializers.IntegerField()
    wbc_counted = serializers.IntegerField()
    source = serializers.CharField()  # type: ignore[assignment]
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


class CaseSignOffApi(APIView):
    """A hematologist signs off the case; refused (409) while cells are still open."""

    permission_classes = [Roles(POST=LABELLERS)]

    @extend_schema(request=None, responses={200: CaseSerializer, **error_responses(409)})
    def post(self, request: Request, case_id: int) -> Response:
        no_input(request)
        case = case_signoff(case_id=case_id, user=request_user(request))
        return Response(CaseSerializer(case).data)
