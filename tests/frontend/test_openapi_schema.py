"""The frontend's committed copy of the API schema (frontend/openapi.json, from which
frontend/src/api/schema.d.ts is generated) is the schema the server generates now, so the
browser client is type-checked against the API it will talk to.

frontend/src/api/schema.test.ts checks the other half (schema.d.ts against openapi.json),
and `tsc --noEmit` (npm run build) compiles the client against schema.d.ts.
"""

from __future__ import annotations

import difflib
import json

from django.db import connection
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer

from tests.conftest import require_service
from tests.paths import REPO_ROOT

COMMITTED = REPO_ROOT / "frontend" / "openapi.json"


def test_committed_openapi_schema_matches_the_server() -> None:
    # Integer fields' bounds in the schema come from the database backend (SQLite has
    # none); the committed schema is PostgreSQL's, as deployed, and so is `npm run gen:api`.
    require_service("PostgreSQL", connection.vendor == "postgresql")
    schema = SchemaGenerator().get_schema(request=None, public=True)
    current = json.loads(OpenApiJsonRenderer().render(schema, renderer_context={}))
    committed = json.loads(COMMITTED.read_text())
    if current != committed:
        diff = difflib.unified_diff(
            json.dumps(committed, indent=1, sort_keys=True).splitlines(),
            json.dumps(current, indent=1, sort_keys=True).splitlines(),
            "frontend/openapi.json",
            "the server's schema",
            lineterm="",
        )
        shown = "\n".join(list(diff)[:60])
        raise AssertionError(
            "frontend/openapi.json is stale: run `cd frontend && npm run gen:api` and commit "
            f"openapi.json and src/api/schema.d.ts.\n{shown}"
        )
