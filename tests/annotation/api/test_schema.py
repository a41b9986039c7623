"""The OpenAPI schema validates, and generated requests against every operation get no
server error (schemathesis, bounded so the run takes well under a minute)."""

from __future__ import annotations

import json

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.validation import validate_schema
from hypothesis import HealthCheck, settings
from rest_framework.authtoken.models import Token
from rest_framework.utils.encoders import JSONEncoder
from schemathesis.checks import not_a_server_error

pytestmark = pytest.mark.django_db


def test_schema_is_valid_openapi_and_served_with_docs(clients) -> None:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    validate_schema(schema)
    paths = schema["paths"]
    assert "/api/exports/" in paths and "/api/queue/next/" in paths
    assert clients["anonymous"].get("/api/schema/").status_code == 401
    served = clients["data_scientist"].get(
        "/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json"
    )
    assert served.status_code == 200 and served.json()["info"]["title"] == "WBC portal API"
    docs = clients["data_scientist"].get("/api/docs/")
    assert docs.status_code == 200 and b"swagger" in docs.content.lower()


@pytest.fixture
def admin_token(users) -> str:
    return Token.objects.get_or_create(user=users["admin"])[0].key


def _app_schema() -> schemathesis.schemas.BaseSchema:
    """The schema as the app generates it, calling into the app itself (WSGI, in this
    process, so requests see the test's database transaction)."""
    raw = json.loads(
        json.dumps(SchemaGenerator().get_schema(request=None, public=True), cls=JSONEncoder)
    )
    loaded = schemathesis.openapi.from_dict(raw)
    loaded.app = get_wsgi_application()
    return loaded


schema = _app_schema()


@pytest.fixture
def keep_test_connection():
    """As Django's test client does: a finished request must not close the connection
    that holds the test's transaction."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@schema.parametrize()
@settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_generated_requests_get_no_server_error(
    case, admin_token, smear, keep_test_connection
) -> None:
    case.call_and_validate(
        headers={"Authorization": f"Token {admin_token}"}, checks=[not_a_server_error]
    )
