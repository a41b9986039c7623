"""A case's review to its signed report: the lab's review rules, whether the case can be
signed and why not, signing (password again; one or two signatures), reopening with a
reason, interpretive comments, notes on cells, and the report versions as JSON, HTML and
PDF. The rules: annotation/services/cases.py and annotation/selectors/cases.py."""

from __future__ import annotations

import re

from django.http import HttpResponse
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation.api.cases import CaseSerializer
from annotation.api.common import ErrorSerializer, InputSerializer, request_user
from annotation.api.permissions import ADMINS, EVERYONE, LABELLERS, Roles
from annotation.api.schema import error_responses
from annotation.models import Case, CaseReport, ReviewRules
from annotation.selectors.cases import case_get, case_signoff_state, review_rules_get
from annotation.selectors.reports import (
    case_cell_notes,
    case_interpretation_get,
    case_report_get,
    case_reports,
)
from annotation.services.cases import (
    case_cell_note_set,
    case_interpretation_update,
    case_reopen,
    case_sign,
    review_rules_update,
)
from annotation.services.reports import report_html_render, report_pdf_render

# --- review rules -----------------------------------------------------------------------


@extend_schema_field({"type": "integer", "enum": list(ReviewRules.CountTarget.values)})
class CountTargetField(serializers.IntegerField):
    """Reviewed white cells a case needs before signing: 100, 200, 400, or 0 for every
    cell of the case (the service refuses other values, naming the allowed ones)."""


class CodedCommentSerializer(InputSerializer):
    code = serializers.CharField(max_length=32)
    text = serializers.CharField(max_length=1000)


class ReviewRulesSerializer(serializers.Serializer):
    count_target = CountTargetField(
        help_text="reviewed white cells a case needs before signing: 100, 200, 400, or 0 "
        "for every cell of the case"
    )
    two_person_signoff = serializers.BooleanField()
    coded_comments = CodedCommentSerializer(many=True)
    updated_by = serializers.CharField(allow_null=True, source="updated_by.username")
    updated_at = serializers.DateTimeField(allow_null=True)


class ReviewRulesApi(APIView):
    """GET: the lab's review rules (readers and admins). PUT: change them (admins)."""

    permission_classes = [Roles(GET=LABELLERS, PUT=ADMINS)]

    class RulesInputSerializer(InputSerializer):
        count_target = CountTargetField(
            required=False, help_text="100, 200, 400, or 0 for every cell of the case"
        )
        two_person_signoff = serializers.BooleanField(required=False)
        coded_comments = CodedCommentSerializer(many=True, required=False)

    @extend_schema(responses=ReviewRulesSerializer)
    def get(self, request: Request) -> Response:
        return Response(ReviewRulesSerializer(review_rules_get()).data)

    @extend_schema(request=RulesInputSerializer, responses=ReviewRulesSerializer)
    def put(self, request: Request) -> Response:
        data = self.RulesInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        rules = review_rules_update(user=request_user(request), **data.validated_data)
        return Response(ReviewRulesSerializer(rules).data)


# --- reports ----------------------------------------------------------------------------


class ReportSerializer(serializers.ModelSerializer[CaseReport]):
    signed_by = serializers.CharField(source="signed_by.username")
    second_signed_by = serializers.CharField(
        source="second_signed_by.username", allow_null=True, default=None
    )
    amends_version = serializers.IntegerField(
        source="amends.version", allow_null=True, default=None
    )
    superseded = serializers.SerializerMethodField(help_text="a later version amends it")
    html_url = serializers.SerializerMethodField()
    pdf_url = serializers.SerializerMethodField()

    class Meta:
        model = CaseReport
        fields = [
            "id",
            "version",
            "is_final",
            "superseded",
            "signed_by",
            "signed_at",
            "second_signed_by",
            "second_signed_at",
            "amends_version",
            "amend_reason",
            "created_at",
            "html_url",
            "pdf_url",
        ]

    def get_superseded(self, report: CaseReport) -> bool:
        latest = self.context.get("latest_version")
        return latest is not None and report.version < latest

    def _url(self, report: CaseReport, name: str) -> str:
        return reverse(name, kwargs={"case_id": report.case_id, "version": report.version})

    def get_html_url(self, report: CaseReport) -> str:
        return self._url(report, "api:case-report-html")

    def get_pdf_url(self, report: CaseReport) -> str:
        return self._url(report, "api:case-report-pdf")


class ReportDetailSerializer(ReportSerializer):
    content = serializers.DictField(help_text="the frozen report (annotation/review_queue.md)")

    class Meta(ReportSerializer.Meta):
        fields = [*ReportSerializer.Meta.fields, "content"]


def _latest_version(case_id: int) -> int | None:
    latest = case_reports(case_id=case_id).values_list("version", flat=True).first()
    return latest


class CaseReportListApi(APIView):
    """Every report version of the case, newest first."""

    permission_classes = [Roles(GET=EVERYONE)]

    @extend_schema(operation_id="case_reports_list", responses=ReportSerializer(many=True))
    def get(self, request: Request, case_id: int) -> Response:
        case_get(case_id=case_id)
        reports = list(case_reports(case_id=case_id))
        context = {"latest_version": reports[0].version if reports else None}
        return Response(ReportSerializer(reports, many=True, context=context).data)


class CaseReportDetailApi(APIView):
    """One report version with its frozen content."""

    permission_classes = [Roles(GET=EVERYONE)]

    @extend_schema(responses=ReportDetailSerializer)
    def get(self, request: Request, case_id: int, version: int) -> Response:
        report = case_report_get(case_id=case_id, version=version)
        context = {"latest_version": _latest_version(case_id)}
        return Response(ReportDetailSerializer(report, context=context).data)


def _filename(report: CaseReport, ext: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", report.case.accession_id)[:80]
    return f"report-{safe}-v{report.version}.{ext}"


class CaseReportHtmlApi(APIView):
    """The printable report (HTML with print CSS)."""

    permission_classes = [Roles(GET=EVERYONE)]

    @extend_schema(
        responses={
            (200, "text/html"): OpenApiResponse(OpenApiTypes.STR, description="the report"),
            404: ErrorSerializer,
        }
    )
    def get(self, request: Request, case_id: int, version: int) -> HttpResponse:
        report = case_report_get(case_id=case_id, version=version)
        return HttpResponse(report_html_render(report=report), content_type="text/html")


class CaseReportPdfApi(APIView):
    """The report as a PDF download (WeasyPrint)."""

    permission_classes = [Roles(GET=EVERYONE)]

    @extend_schema(
        responses={
            (200, "application/pdf"): OpenApiResponse(
                OpenApiTypes.BINARY, description="the report as PDF"
            ),
            404: ErrorSerializer,
        }
    )
    def get(self, request: Request, case_id: int, version: int) -> HttpResponse:
        report = case_report_get(case_id=case_id, version=version)
        response = HttpResponse(report_pdf_render(report=report), content_type="application/pdf")
        response["Content-Disposition"] = f'attachment; filename="{_filename(report, "pdf")}"'
        return response


# --- sign-off and reopening -------------------------------------------------------------


class UnmetRuleSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class SignoffRulesSerializer(serializers.Serializer):
    count_target = serializers.IntegerField()
    two_person_signoff = serializers.BooleanField()


class SignoffStateSerializer(serializers.Serializer):
    can_sign = serializers.BooleanField(help_text="the caller may sign now")
    next_step = serializers.ChoiceField(
        choices=["first_signature", "second_signature"],
        allow_null=True,
        help_text="which signature is due; null when the case is signed",
    )
    unmet = UnmetRuleSerializer(many=True, help_text="every reason it cannot be signed yet")
    status = serializers.ChoiceField(choices=Case.Status.choices)
    rules = SignoffRulesSerializer()
    latest_report = ReportSerializer(allow_null=True)
    reopen_reason = serializers.CharField(help_text="why it was reopened (while amending)")


class SignedSerializer(serializers.Serializer):
    case = CaseSerializer()
    report = ReportSerializer()


class CaseSignOffApi(APIView):
    """GET: whether the caller may sign the case now and every reason why not (the UI
    shows it before the button). POST: sign it, with the caller's password again: 403
    for a wrong one, 409 listing every unmet rule, or the second signer being the first."""

    permission_classes = [Roles(GET=EVERYONE, POST=LABELLERS)]

    class SignInputSerializer(InputSerializer):
        password = serializers.CharField(
            trim_whitespace=False, help_text="the signer's own password, again"
        )

    @extend_schema(responses=SignoffStateSerializer)
    def get(self, request: Request, case_id: int) -> Response:
        case = case_get(case_id=case_id)
        state = case_signoff_state(case=case, user=request_user(request))
        return Response(SignoffStateSerializer(state).data)

    @extend_schema(
        request=SignInputSerializer, responses={200: SignedSerializer, **error_responses(409)}
    )
    def post(self, request: Request, case_id: int) -> Response:
        data = self.SignInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        report = case_sign(
            case_id=case_id, user=request_user(request), password=data.validated_data["password"]
        )
        case = case_get(case_id=case_id)
        return Response(
            {"case": CaseSerializer(case).data, "report": ReportSerializer(report).data}
        )


class CaseReopenApi(APIView):
    """Reopen a signed case to amend it (a reason is required); 409 unless signed."""

    permission_classes = [Roles(POST=LABELLERS)]

    class ReopenInputSerializer(InputSerializer):
        reason = serializers.CharField(max_length=2000, help_text="printed on the amendment")

    @extend_schema(
        request=ReopenInputSerializer, responses={200: CaseSerializer, **error_responses(409)}
    )
    def post(self, request: Request, case_id: int) -> Response:
        data = self.ReopenInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        case_reopen(
            case_id=case_id, user=request_user(request), reason=data.validated_data["reason"]
        )
        return Response(CaseSerializer(case_get(case_id=case_id)).data)


# --- comments and notes -----------------------------------------------------------------


class InterpretationSerializer(serializers.Serializer):
    text = serializers.CharField(allow_blank=True)
    coded = serializers.ListField(child=serializers.CharField())
    updated_by = serializers.CharField(allow_null=True)
    updated_at = serializers.DateTimeField(allow_null=True)


class CaseInterpretationApi(APIView):
    """The case's interpretive comment: free text plus codes from the lab's coded list
    (GET /api/review-rules/); editable until the case is signed (409 after)."""

    permission_classes = [Roles(GET=EVERYONE, PUT=LABELLERS)]

    class InterpretationInputSerializer(InputSerializer):
        text = serializers.CharField(allow_blank=True, max_length=10_000, default="")
        coded = serializers.ListField(
            child=serializers.CharField(max_length=32), max_length=50, default=list
        )

    @extend_schema(responses=InterpretationSerializer)
    def get(self, request: Request, case_id: int) -> Response:
        case_get(case_id=case_id)
        return Response(InterpretationSerializer(case_interpretation_get(case_id=case_id)).data)

    @extend_schema(
        request=InterpretationInputSerializer,
        responses={200: InterpretationSerializer, **error_responses(409)},
    )
    def put(self, request: Request, case_id: int) -> Response:
        data = self.InterpretationInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        case_interpretation_update(
            case_id=case_id, user=request_user(request), **data.validated_data
        )
        return Response(InterpretationSerializer(case_interpretation_get(case_id=case_id)).data)


class CellNoteSerializer(serializers.Serializer):
    cell_id = serializers.IntegerField()
    flagged = serializers.BooleanField(help_text="flagged in the review queue")
    note = serializers.CharField(allow_blank=True)
    author = serializers.CharField(allow_null=True)
    updated_at = serializers.DateTimeField(allow_null=True)


class CaseCellNoteListApi(APIView):
    """The case's flagged cells and cells with a note (printed on the report)."""

    permission_classes = [Roles(GET=EVERYONE)]

    @extend_schema(operation_id="case_cell_notes_list", responses=CellNoteSerializer(many=True))
    def get(self, request: Request, case_id: int) -> Response:
        case_get(case_id=case_id)
        return Response(CellNoteSerializer(case_cell_notes(case_id=case_id), many=True).data)


class CaseCellNoteApi(APIView):
    """Set the note on a cell of the case (an empty note removes it); until signed."""

    permission_classes = [Roles(PUT=LABELLERS)]

    class NoteInputSerializer(InputSerializer):
        note = serializers.CharField(allow_blank=True, max_length=2000, trim_whitespace=True)

    @extend_schema(
        request=NoteInputSerializer,
        responses={200: CellNoteSerializer(many=True), **error_responses(409)},
    )
    def put(self, request: Request, case_id: int, cell_id: int) -> Response:
        data = self.NoteInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        case_cell_note_set(
            case_id=case_id, cell_id=cell_id, user=request_user(request), **data.validated_data
        )
        return Response(CellNoteSerializer(case_cell_notes(case_id=case_id), many=True).data)
