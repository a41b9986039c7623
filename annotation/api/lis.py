"""The result sent to the LIS: a case's delivery status per report version and
receiver (sent, failed with the reason, retrying with its attempts), and an admin's
re-send of a failed delivery. Services: annotation/services/lis/; docs/lis.md."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation.api.common import no_input, request_user
from annotation.api.permissions import ADMINS, EVERYONE, Roles
from annotation.api.schema import error_responses
from annotation.models import LisDelivery
from annotation.selectors.lis import case_lis_deliveries
from annotation.services.lis import lis_delivery_resend, lis_endpoints


class LisDeliverySerializer(serializers.ModelSerializer[LisDelivery]):
    report_version = serializers.IntegerField(source="report.version")
    status = serializers.ChoiceField(
        choices=LisDelivery.Status.choices,
        help_text="pending: not tried yet; retrying: the receiver was unavailable and "
        "another attempt is due at next_attempt_at; sent; failed: refused, or retries "
        "spent (last_error says why; an admin can re-send)",
    )
    kind = serializers.ChoiceField(choices=LisDelivery.Kind.choices)
    response_code = serializers.CharField(
        help_text="the receiver's answer: the HTTP status (FHIR) or the ACK code (HL7)"
    )
    payload_hash = serializers.CharField(help_text="SHA-256 of the message sent, in hex")

    class Meta:
        model = LisDelivery
        fields = [
            "id",
            "report_version",
            "kind",
            "endpoint",
            "status",
            "attempts",
            "last_error",
            "response_code",
            "payload_hash",
            "created_at",
            "last_attempt_at",
            "next_attempt_at",
            "sent_at",
        ]


class CaseLisDeliveriesSerializer(serializers.Serializer):
    enabled = serializers.BooleanField(help_text="at least one LIS receiver is configured")
    receivers = serializers.ListField(
        child=serializers.ChoiceField(choices=LisDelivery.Kind.choices),
        help_text="the kinds of receiver configured now",
    )
    deliveries = LisDeliverySerializer(many=True, help_text="newest report version first")


class CaseLisDeliveriesApi(APIView):
    """The LIS delivery status of a case's signed reports."""

    permission_classes = [Roles(GET=EVERYONE)]

    @extend_schema(
        operation_id="case_lis_deliveries",
        responses=CaseLisDeliveriesSerializer,
    )
    def get(self, request: Request, case_id: int) -> Response:
        deliveries = list(case_lis_deliveries(case_id=case_id))
        receivers = [e.kind for e in lis_endpoints()]
        return Response(
            CaseLisDeliveriesSerializer(
                {"enabled": bool(receivers), "receivers": receivers, "deliveries": deliveries}
            ).data
        )


class LisDeliveryRetryApi(APIView):
    """Send a failed delivery again (admins): the same message, attempts from zero."""

    permission_classes = [Roles(POST=ADMINS)]

    @extend_schema(
        operation_id="lis_delivery_retry",
        request=None,
        responses={200: LisDeliverySerializer, **error_responses(409)},
    )
    def post(self, request: Request, delivery_id: int) -> Response:
        no_input(request)
        delivery = lis_delivery_resend(delivery_id=delivery_id, user=request_user(request))
        return Response(LisDeliverySerializer(delivery).data)
