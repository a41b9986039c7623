"""The signed report sent to the laboratory information system (docs/lis.md): message
builders (``fhir``, ``hl7``; pure, from the frozen report content), transports
(``transport``: HTTP and MLLP) and the delivery rows (``delivery``)."""

from annotation.services.lis.delivery import (
    lis_deliveries_requeue_lost,
    lis_delivery_attempt,
    lis_delivery_resend,
    lis_endpoints,
    lis_report_finalised,
)

__all__ = [
    "lis_deliveries_requeue_lost",
    "lis_delivery_attempt",
    "lis_delivery_resend",
    "lis_endpoints",
    "lis_report_finalised",
]
