"""Schemathesis against ``/api/v1/openapi.json``: generated requests for every
operation, as a site admin with a write token, on a real store (SQLite).  No answer is
a server error, and every answer matches the documented statuses, media types and
schemas (problem details for the errors).  A fixed budget of examples per operation
keeps it to seconds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from argon2 import PasswordHasher
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from mailflow.store import create_engines, upgrade_to_head
from mailflow.testing.api import api_app

EXAMPLES_PER_OPERATION = 6
TOKEN_HOLDER: dict[str, str] = {}
CHECKS = [checks.not_a_server_error, checks.status_code_conformance,
          checks.content_type_conformance, checks.response_schema_conformance]


@pytest.fixture(scope="module")
def api_under_test(tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[schemathesis.BaseSchema]:
    folder: Path = tmp_path_factory.mktemp("schema")
    engines = create_engines(f"sqlite:///{folder / 'store.db'}", pool_size=4)
    upgrade_to_head(engines.writer)
    with api_app(engines, max_failures=10_000) as harness:
        harness.directory.add_domain("example.test")
        harness.directory.create_list("team@example.test")
        harness.directory.import_members("team@example.test", [("ann@x.test", "Ann")])
        harness.access.store.add_user("root@example.test",
                                      PasswordHasher().hash("a long password"), True, 0.0)
        TOKEN_HOLDER["token"] = harness.access.create_token("root@example.test")[1]
        yield schemathesis.openapi.from_asgi("/api/v1/openapi.json", harness.app)
    engines.dispose()


def test_every_operation_answers_as_documented(
        api_under_test: schemathesis.BaseSchema) -> None:
    headers = {"Authorization": f"Bearer {TOKEN_HOLDER['token']}"}
    tested = []
    for found in api_under_test.include(path_regex="^/api/v1/").get_all_operations():
        operation = found.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True,
                  database=None, suppress_health_check=list(HealthCheck))
        def answers_as_documented(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS)

        answers_as_documented()
        tested.append(operation.label)
    assert len(tested) > 30  # every operation, not a filter gone wrong
