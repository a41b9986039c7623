from tests.annotation.api.conftest import (  # noqa: F401
    active_model,
    admin_api,
    clients,
    make_cell,
    smear,
    users,
)
