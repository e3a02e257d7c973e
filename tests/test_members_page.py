"""A roster page by page from the store (SQLite, PostgreSQL): the API's member list."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from mailflow.errors import NotFound
from mailflow.services.directory import DirectoryService
from mailflow.store import Repository
from mailflow.store.repository import ANALYZE_AFTER_MEMBERS
from mailflow.testing.factories import make_list


def test_pages_follow_the_address_order_and_search_any_case(repo: Repository) -> None:
    make_list(repo, "team@example.test", [f"m{i}@x.test" for i in range(7)])
    directory = DirectoryService(repo)
    directory.import_members("team@example.test", [("m3@x.test", "Dora 100%")])
    first = directory.members_page("team@example.test", 3)
    assert [m.address for m in first] == ["m0@x.test", "m1@x.test", "m2@x.test"]
    after = directory.members_page("team@example.test", 3, first[-1].address)
    assert [m.address for m in after] == ["m3@x.test", "m4@x.test", "m5@x.test"]
    assert [m.name for m in directory.members_page("team@example.test", 9, "", "DORA")] == [
        "Dora 100%"]
    assert [m.address for m in directory.members_page("team@example.test", 9, "", "0%")] == [
        "m3@x.test"]  # % is itself, not a wildcard
    with pytest.raises(NotFound):
        directory.members_page("nobody@example.test", 3)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_large_import_refreshes_postgresqls_statistics(repo: Repository) -> None:
    """Else its planner sorts the whole roster for every page until autovacuum comes."""
    make_list(repo, "big@example.test", [])
    repo.add_members("big@example.test",
                     [f"m{i}@x.test" for i in range(ANALYZE_AFTER_MEMBERS)], 0.0)
    with repo.engines.reader.connect() as conn:
        analysed = conn.scalar(text("SELECT last_analyze FROM pg_stat_user_tables "
                                    "WHERE relname = 'members' "
                                    "AND schemaname = current_schema()"))
    assert analysed is not None
