"""The API tests' fixtures (a user and token client per role, a small case), reused."""

from tests.annotation.api.conftest import (  # noqa: F401
    active_model,
    admin_api,
    clients,
    make_cell,
    smear,
    users,
)
