"""A list's decoration in the store, on SQLite and PostgreSQL: set through the directory
(validated), read back, shared between the list objects read, refused for aliases."""

from __future__ import annotations

import pytest

from mailflow.errors import InvalidInput
from mailflow.model import NO_DECORATION, Decoration, ListKind
from mailflow.services.directory import DirectoryService
from mailflow.store import Repository


@pytest.fixture
def directory(repo: Repository) -> DirectoryService:
    service = DirectoryService(repo)
    service.add_domain("example.test")
    service.create_list("team@example.test", name="Team")
    service.create_list("info@example.test", kind=ListKind.ALIAS)
    return service


def test_decoration_is_stored_and_cleared(directory: DirectoryService) -> None:
    assert directory.get_list("team@example.test").decoration is NO_DECORATION
    updated = directory.update_list("team@example.test", decoration={
        "subject_prefix": " [team] ", "reply_to": "List", "footer_template": "-- \n{{ list.name }}",
        "archive_url": "https://archive.example.test/team"})
    expected = Decoration("[team]", "list", "", "-- \n{{ list.name }}",
                          "https://archive.example.test/team")
    assert updated.decoration == expected
    assert directory.get_list("team@example.test").decoration == expected
    directory.update_list("team@example.test", decoration={"reply_to": "Help@Example.test"})
    assert directory.get_list("team@example.test").decoration.reply_to == "help@example.test"
    cleared = directory.update_list("team@example.test", decoration={
        "subject_prefix": "", "reply_to": "none", "footer_template": "", "archive_url": ""})
    assert cleared.decoration is NO_DECORATION


def test_list_objects_share_one_decoration(directory: DirectoryService,
                                           repo: Repository) -> None:
    directory.update_list("team@example.test", decoration={"footer_template": "x" * 3000})
    first = repo.resolve("team@example.test").mailing_list
    again = repo.resolve("team+tag@example.test").mailing_list
    assert first is not None and again is not None
    assert first.decoration is again.decoration
    assert directory.get_list("team@example.test").decoration is first.decoration


@pytest.mark.parametrize(("decoration", "why"), [
    ({"subject_prefix": "[a]\r\nBcc: x@evil.test"}, "control character"),
    ({"subject_prefix": "x" * 101}, "too long"),
    ({"reply_to": "somewhere"}, "none, list or an address"),
    ({"footer_template": "{{ list.__class__ }}"}, "footer template refused"),
    ({"header_template": "{% for x in y %}{% endfor %}"}, "loops are not allowed"),
    ({"footer_template": "x" * 4001}, "too long"),
    ({"archive_url": "javascript:alert(1)"}, "http(s) or mailto"),
    ({"archive_url": "https://a.test/x>, <https://evil.test"}, "angle brackets"),
])
def test_bad_decoration_is_refused(directory: DirectoryService,
                                   decoration: dict[str, str], why: str) -> None:
    with pytest.raises(InvalidInput, match=r".*" + why.replace("(", r"\(").replace(")", r"\)")):
        directory.update_list("team@example.test", decoration=decoration)
    assert directory.get_list("team@example.test").decoration is NO_DECORATION


def test_aliases_are_not_decorated(directory: DirectoryService) -> None:
    with pytest.raises(InvalidInput, match="not a list"):
        directory.update_list("info@example.test", decoration={"subject_prefix": "[i]"})
    made_list = directory.update_list("info@example.test", kind="list",
                                      decoration={"subject_prefix": "[i]"})
    assert made_list.decoration.subject_prefix == "[i]"
