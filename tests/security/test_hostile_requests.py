"""Hostile or careless requests get a clear 4xx in the API's error shape, never a 500 or a
silent success: unknown keys in any write body (found in the OpenAPI schema, so a new
endpoint is covered), training flags the job would not honour, oversized and deeply
nested bodies, POSTs to URLs that do not exist; and every page carries a CSP."""

from __future__ import annotations

import re
import time

import pytest
from django.test import Client
from drf_spectacular.generators import SchemaGenerator
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotation.models import Case, TrainingJob
from tests.annotation.api.conftest import PASSWORD
from tests.annotation.api.test_errors_and_auth import assert_error_shape

pytestmark = pytest.mark.django_db

WRITES = ("post", "put", "patch", "delete")
# Clients tried in turn until one may use the endpoint (403 means: try the next role).
ROLE_ORDER = ("admin", "senior_hematologist", "hematologist", "data_scientist")


def write_operations() -> list[tuple[str, str, bool]]:
    """(path template, method, takes a JSON body) for every write in the schema."""
    schema = SchemaGenerator().get_schema(request=None, public=True)
    found = []
    for path, item in schema["paths"].items():
        for method in WRITES:
            operation = item.get(method)
            if operation is None:
                continue
            content = operation.get("requestBody", {}).get("content", {})
            if content and "application/json" not in content:
                continue  # multipart only: the upload, tested below
            found.append((path, method, bool(content)))
    return found


def test_the_schema_lists_the_write_endpoints() -> None:
    paths = {(p, m) for p, m, _ in write_operations()}
    assert ("/api/cases/", "post") in paths and ("/api/training-jobs/", "post") in paths
    assert ("/api/users/{user_id}/", "patch") in paths
    assert ("/api/queue/items/{item_id}/skip/", "post") in paths


def test_an_unknown_key_in_any_write_body_is_a_400_naming_it(clients, smear) -> None:
    cell_id = smear["labelled"][0].pk
    failures = []
    for template, method, _ in write_operations():
        path = re.sub(r"\{\w+\}", str(cell_id), template)
        for role in ROLE_ORDER:
            client = clients[role]
            response = getattr(client, method)(path, {"no_such_key": 1}, format="json")
            if response.status_code != 403:
                break
        body = response.json() if response.content else {}
        fields = body.get("error", {}).get("fields", {})
        if response.status_code != 400 or "no_such_key" not in fields:
            failures.append(f"{method.upper()} {path}: {response.status_code} {body}")
        elif not re.search(r"allowed: \w|takes no fields", fields["no_such_key"]):
            failures.append(f"{method.upper()} {path}: no allowed keys in {fields}")
    assert not failures, "\n".join(failures)


def test_the_upload_refuses_an_unknown_form_field(admin_api) -> None:
    response = admin_api.post("/api/cells/upload/", {"cases": "X"}, format="multipart")
    error = assert_error_shape(response, 400, "invalid")
    assert "files, case, label" in error["fields"]["cases"]


def test_the_allowed_keys_are_named_and_nothing_is_created(admin_api) -> None:
    response = admin_api.post(
        "/api/cases/", {"accession_id": "A-1", "diagnosys": "CLL"}, format="json"
    )
    error = assert_error_shape(response, 400, "invalid")
    assert "accession_id" in error["fields"]["diagnosys"]
    assert "diagnosis" in error["fields"]["diagnosys"]
    assert not Case.objects.exists()


def test_training_params_take_only_flags_the_training_cli_knows(admin_api) -> None:
    ignored = admin_api.post(
        "/api/training-jobs/", {"params": {"epochs_finetune": 1}}, format="json"
    )
    error = assert_error_shape(ignored, 400, "invalid")
    assert set(error["fields"]) == {"params.epochs_finetune"}
    assert "args" in error["fields"]["params.epochs_finetune"]
    wrong_flag = admin_api.post(
        "/api/training-jobs/", {"params": {"args": ["--epochs_finetune", "1"]}}, format="json"
    )
    error = assert_error_shape(wrong_flag, 400, "invalid")
    assert "--epochs_finetune" in error["fields"]["params.args"]
    bad_value = admin_api.post(
        "/api/training-jobs/", {"params": {"args": ["--epochs-finetune", "x"]}}, format="json"
    )
    assert "--epochs-finetune" in assert_error_shape(bad_value, 400)["fields"]["params.args"]
    assert not TrainingJob.objects.exists()
    good = {"args": ["--epochs-finetune", "2", "--epochs-weak", "0"]}
    created = admin_api.post("/api/training-jobs/", {"params": good}, format="json")
    assert created.status_code == 201 and created.json()["params"] == good


def test_an_action_without_a_body_refuses_one_with_keys(admin_api, smear) -> None:
    response = admin_api.post("/api/model-versions/1/rollback/", {"force": True}, format="json")
    error = assert_error_shape(response, 400, "invalid")
    assert "takes no fields" in error["fields"]["force"]
    # sign-off reads one field (the password again); anything else is named
    case = smear["case"]
    response = admin_api.post(f"/api/cases/{case.pk}/sign-off/", {"force": True}, format="json")
    error = assert_error_shape(response, 400, "invalid")
    assert "allowed: password" in error["fields"]["force"]


def test_a_body_over_the_limit_is_a_413(admin_api, settings) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024
    big = '{"accession_id": "A", "diagnosis": "' + "x" * (3 * 1024 * 1024) + '"}'
    started = time.monotonic()
    response = admin_api.generic("POST", "/api/cases/", big, content_type="application/json")
    error = assert_error_shape(response, 413, "request_too_large")
    assert "1048576 bytes" in error["message"]
    assert time.monotonic() - started < 5
    form = admin_api.generic(
        "POST",
        "/api/cases/",
        "accession_id=" + "x" * (2 * 1024 * 1024),
        content_type="application/x-www-form-urlencoded",
    )
    assert_error_shape(form, 413, "request_too_large")
    assert not Case.objects.exists()


def test_the_default_body_limit_refuses_30_mib(admin_api) -> None:
    big = '{"accession_id": "A", "metadata": {"x": "' + "y" * (30 * 1024 * 1024) + '"}}'
    response = admin_api.generic("POST", "/api/cases/", big, content_type="application/json")
    assert_error_shape(response, 413, "request_too_large")


@pytest.mark.parametrize("levels", [100_000, 40])
def test_deeply_nested_json_is_a_400(admin_api, levels) -> None:
    body = '{"accession_id": "A", "metadata": {"x": ' + "[" * levels + "]" * levels + "}}"
    response = admin_api.generic("POST", "/api/cases/", body, content_type="application/json")
    error = assert_error_shape(response, 400, "parse_error")
    assert "nested deeper than the limit of 32" in error["message"]
    assert not Case.objects.exists()


def test_json_within_the_depth_limit_is_accepted(admin_api) -> None:
    body = '{"accession_id": "A", "metadata": {"x": ' + "[" * 20 + "]" * 20 + "}}"
    response = admin_api.generic("POST", "/api/cases/", body, content_type="application/json")
    assert response.status_code == 201, response.content


@pytest.mark.parametrize("method", ["get", "post", "put", "patch", "delete"])
def test_an_unknown_api_url_is_the_json_404_for_tokens_and_sessions(users, method) -> None:
    token = APIClient()
    key, _ = Token.objects.get_or_create(user=users["admin"])
    token.credentials(HTTP_AUTHORIZATION=f"Token {key.key}")
    assert_error_shape(getattr(token, method)("/api/no-such-thing/", {}, format="json"), 404)
    session = Client(enforce_csrf_checks=True)
    assert session.login(username="u_admin", password=PASSWORD)
    response = session.generic(
        method.upper(), "/api/no-such/", "{}", content_type="application/json"
    )
    assert_error_shape(response, 404, "not_found")


def test_pages_send_a_content_security_policy(users) -> None:
    session = Client()
    assert session.login(username="u_hematologist", password=PASSWORD)
    for url in ("/", "/accounts/login/", "/api/cases/"):
        policy = session.get(url)["Content-Security-Policy"]
        assert "default-src 'self'" in policy and "script-src 'self'" in policy
        assert "'unsafe-inline'" not in policy and "'unsafe-eval'" not in policy
    assert Client().get("/accounts/login/").has_header("Content-Security-Policy")
