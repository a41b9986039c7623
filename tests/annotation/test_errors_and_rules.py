"""The one home of errors and outages, and the rules that need no database."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from django.db import OperationalError
from django.test import RequestFactory
from kombu.exceptions import OperationalError as KombuOperationalError
from redis import ConnectionError as RedisConnectionError

from annotation.api.errors import api_exception_handler
from annotation.errors import (
    RETRY_AFTER_SECONDS,
    ApplicationError,
    get_or_404,
    is_broker_unavailable,
    is_database_unavailable,
)
from annotation.models import Case
from annotation.roles import ADMIN, HEMATOLOGIST, roles_from_groups
from annotation.rules import AUDIT, LOW_CONFIDENCE, WEAK_CLASS, guard_comparison, route_reasons
from annotation.rules import weak_classes as rules_weak_classes
from wbcportal.middleware import database_unavailable_response


def test_outages_are_recognised_in_one_place() -> None:
    assert is_database_unavailable(OperationalError("server closed the connection"))
    assert not is_database_unavailable(ValueError("bad query"))
    assert is_broker_unavailable(RedisConnectionError("refused"))
    assert is_broker_unavailable(KombuOperationalError("refused"))
    assert not is_broker_unavailable(OperationalError("database"))


@pytest.mark.parametrize("path", ["/api/cases/", "/cases/"])
def test_every_503_of_the_middleware_says_when_to_retry(path: str) -> None:
    response = database_unavailable_response(RequestFactory().get(path))
    assert response.status_code == 503
    assert response["Retry-After"] == str(RETRY_AFTER_SECONDS)


def test_every_503_of_the_api_says_when_to_retry() -> None:
    outage = api_exception_handler(RedisConnectionError("refused"), {})
    assert outage is not None and outage.status_code == 503
    assert outage["Retry-After"] == str(RETRY_AFTER_SECONDS)
    service = api_exception_handler(ApplicationError("staging failed", status=503), {})
    assert service is not None and service["Retry-After"] == str(RETRY_AFTER_SECONDS)
    client_error = api_exception_handler(ApplicationError("bad"), {})
    assert client_error is not None and "Retry-After" not in client_error


@pytest.mark.django_db
def test_get_or_404_names_what_does_not_exist() -> None:
    with pytest.raises(ApplicationError) as raised:
        get_or_404(Case, what="Case", pk=987654)
    assert raised.value.status == 404 and raised.value.message == "Case 987654 does not exist."
    with pytest.raises(ApplicationError):
        get_or_404(Case.objects.all(), what="Case", pk="not-a-number")


def test_a_superuser_counts_as_an_admin_and_other_groups_are_not_roles() -> None:
    assert roles_from_groups(["hematologist", "coffee club"], is_superuser=False) == {HEMATOLOGIST}
    assert roles_from_groups([], is_superuser=True) == {ADMIN}


def _version(balanced_accuracy: float, tprs: dict[str, float | None]) -> SimpleNamespace:
    return SimpleNamespace(
        metrics={
            "balanced_accuracy": balanced_accuracy,
            "per_class": {code: {"tpr": tpr} for code, tpr in tprs.items()},
        },
        class_codes=list(tprs),
        per_class_tpr=tprs,
    )


def test_the_guard_refuses_a_class_that_regresses_without_touching_the_database() -> None:
    active = _version(0.80, {"NE": 0.90, "LY": 0.90})
    assert guard_comparison(_version(0.82, {"NE": 0.91, "LY": 0.88}), active)["passes"]
    worse = guard_comparison(_version(0.85, {"NE": 0.99, "LY": 0.80}), active)
    assert not worse["passes"] and set(worse["class_drops"]) == {"LY"}
    assert guard_comparison(active, None)["passes"]


def test_route_reasons_and_weak_classes_are_plain_rules() -> None:
    version = _version(0.8, {"NE": 0.95, "LY": 0.5, "BL": None})
    weak = rules_weak_classes(version, 0.9)  # type: ignore[arg-type]
    assert weak == {"LY", "BL"}
    config = SimpleNamespace(confidence_threshold=0.7, audit_rate=1.0)
    unsure = SimpleNamespace(confidence=0.5, top_code="LY", cell_id=1, model_version_id=1)
    sure = SimpleNamespace(confidence=0.99, top_code="NE", cell_id=1, model_version_id=1)
    assert route_reasons(prediction=unsure, config=config, weak=weak, has_conflict=False) == [
        LOW_CONFIDENCE,
        WEAK_CLASS,
    ]
    assert route_reasons(prediction=sure, config=config, weak=weak, has_conflict=False) == [AUDIT]
