"""Every API URL x role x method against the table below, including anonymous.

A URL pattern under /api/ that has no row here fails the test, as does a row whose
rules differ from what the endpoint actually does.
"""

from __future__ import annotations

import re

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

ANON, HEME, ADMIN, DS = "anonymous", "hematologist", "admin", "data_scientist"
SENIOR = "senior_hematologist"
ALL = {HEME, SENIOR, ADMIN, DS}
PUBLIC = {ANON, *ALL}
LABELLERS = {HEME, SENIOR, ADMIN}
ADJUDICATORS = {SENIOR, ADMIN}
EXPORTERS = {DS, ADMIN}
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")

# url name -> {method: roles allowed}; a method not listed is allowed to nobody.
EXPECTED: dict[str, dict[str, set[str]]] = {
    "schema": {"GET": ALL},
    "docs": {"GET": ALL},
    "auth-token": {"POST": PUBLIC},
    "auth-token-revoke": {"POST": ALL},
    "auth-me": {"GET": ALL},
    "users": {"GET": {ADMIN}, "POST": {ADMIN}},
    "user-detail": {"PATCH": {ADMIN}},
    "user-token-revoke": {"POST": {ADMIN}},
    "cases": {"GET": ALL, "POST": {ADMIN}},
    "case-detail": {"GET": ALL},
    "case-signoff": {"GET": ALL, "POST": LABELLERS},
    "review-rules": {"GET": LABELLERS, "PUT": {ADMIN}},
    "case-reopen": {"POST": LABELLERS},
    "case-interpretation": {"GET": ALL, "PUT": LABELLERS},
    "case-cell-notes": {"GET": ALL},
    "case-cell-note": {"PUT": LABELLERS},
    "case-reports": {"GET": ALL},
    "case-report-detail": {"GET": ALL},
    "case-report-html": {"GET": ALL},
    "case-report-pdf": {"GET": ALL},
    "case-lis-deliveries": {"GET": ALL},
    "lis-delivery-retry": {"POST": {ADMIN}},
    "cells": {"GET": ALL},
    "cell-upload": {"POST": {ADMIN}},
    "cell-detail": {"GET": ALL},
    "cell-image": {"GET": ALL},
    "cell-thumbnail": {"GET": ALL},
    "cell-labels": {"GET": ALL, "POST": LABELLERS},
    "segmentation-mask": {"GET": ALL},
    "queue-next": {"POST": LABELLERS},
    "queue-counts": {"GET": ALL},
    "queue-submit": {"POST": LABELLERS},
    "queue-skip": {"POST": LABELLERS},
    "queue-release": {"POST": LABELLERS},
    "queue-release-many": {"POST": LABELLERS},
    "queue-flag": {"POST": LABELLERS},
    "routing-config": {"GET": ALL, "PATCH": {ADMIN}},
    "model-versions": {"GET": ALL},
    "model-version-compare": {"GET": ALL},
    "model-version-detail": {"GET": ALL},
    "model-version-promote": {"POST": {ADMIN}},
    "model-version-rollback": {"POST": {ADMIN}},
    "training-jobs": {"GET": ALL, "POST": {ADMIN}},
    "training-job-detail": {"GET": ALL},
    "training-job-cancel": {"POST": {ADMIN}},
    "exports": {"GET": EXPORTERS},
    "export-jobs": {"GET": EXPORTERS},
    "export-job-detail": {"GET": EXPORTERS},
    "export-job-download": {"GET": EXPORTERS},
    "adjudication": {"GET": ADJUDICATORS},
    "adjudication-decide": {"POST": ADJUDICATORS},
    "agreement": {"GET": {ADMIN, DS}},
    "gold": {"GET": {ADMIN}, "POST": {ADMIN}},
    "gold-performance": {"GET": {ADMIN}},
    "gold-retire": {"DELETE": {ADMIN}},
}
NOT_ROUTES = {"not-found"}  # the catch-all 404 for unknown /api/ URLs


def api_patterns() -> list[tuple[str, str]]:
    """(url name, a concrete path) for every pattern included under api/."""
    found: list[tuple[str, str]] = []

    def walk(patterns: list, prefix: str) -> None:
        for p in patterns:
            route = str(p.pattern)
            if isinstance(p, URLResolver):
                walk(p.url_patterns, prefix + route)
            elif isinstance(p, URLPattern) and (prefix + route).startswith("api/"):
                path = re.sub(r"<int:\w+>", "987654", prefix + route)
                found.append((p.name or path, "/" + path))

    walk(get_resolver().url_patterns, "")
    return found


def test_every_api_url_has_a_row_in_the_table() -> None:
    names = {name for name, _ in api_patterns()} - NOT_ROUTES
    assert names - set(EXPECTED) == set(), "new API URLs need a row in EXPECTED"
    assert set(EXPECTED) - names == set(), "EXPECTED names URLs that no longer exist"


def _call(client: APIClient, method: str, path: str):
    body = {} if method in ("POST", "PUT", "PATCH") else None
    return getattr(client, method.lower())(path, body, format="json")


# Calls that revoke the caller's token: the keys are put back after each, so the same
# clients go on through the rest of the table.
REVOKING = {"auth-token-revoke", "user-token-revoke"}


@pytest.mark.django_db
def test_each_role_gets_exactly_what_the_table_says(clients: dict[str, APIClient]) -> None:
    from rest_framework.authtoken.models import Token

    keys = dict(Token.objects.values_list("user_id", "key"))
    failures = []
    for name, path in api_patterns():
        if name in NOT_ROUTES:
            continue
        if path.startswith("/api/export"):
            path += "?format=csv" if name == "exports" else ""
        for method in METHODS:
            allowed_roles = EXPECTED[name].get(method)
            for who, client in clients.items():
                status = _call(client, method, path).status_code
                if name in REVOKING:
                    for user_id, key in keys.items():
                        Token.objects.get_or_create(user_id=user_id, defaults={"key": key})
                if allowed_roles is None:
                    ok = status == 405
                    if who == ANON and status == 401:
                        ok = True
                    expect = "405 (no such method)"
                elif who in allowed_roles:
                    ok = status not in (401, 403, 405)
                    expect = "allowed"
                else:
                    ok = status == (401 if who == ANON else 403)
                    expect = "401" if who == ANON else "403"
                if not ok:
                    failures.append(f"{method} {path} as {who}: {status}, expected {expect}")
    assert not failures, "\n".join(failures)


def test_views_declare_the_same_rules_as_the_table() -> None:
    from annotation.api.permissions import ANYONE, declared_rule

    resolver = get_resolver()
    for name, path in api_patterns():
        if name in NOT_ROUTES:
            continue
        view = resolver.resolve(path.split("?")[0]).func.cls  # type: ignore[attr-defined]
        rule = declared_rule(view)
        assert rule is not None, f"{view.__name__} declares no Roles(...)"
        declared = {
            m: {ANON if r == ANYONE else r for r in roles}
            for m, roles in rule.rules.items()
            if m not in ("HEAD", "OPTIONS")
        }
        assert declared == EXPECTED[name], name
