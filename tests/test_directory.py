"""The directory service: every value a user gives is validated before it is stored."""

from __future__ import annotations

import pytest

from mailflow.errors import Conflict, InvalidInput, NotFound
from mailflow.model import ForwardStyle, ListKind
from mailflow.services.directory import (
    NAME_MAX_LENGTH,
    PRIORITY_MAX,
    PRIORITY_MIN,
    DirectoryService,
)
from mailflow.store import Repository
from mailflow.testing.clock import FakeClock


@pytest.fixture
def directory(repo: Repository) -> DirectoryService:
    service = DirectoryService(repo, FakeClock(1_800_000_000.0))
    service.add_domain("Example.TEST.")
    return service


def test_addresses_and_domains_are_stored_canonical(directory: DirectoryService) -> None:
    assert [d.name for d in directory.domains()] == ["example.test"]
    created = directory.create_list("Team@Example.test", name="The team", priority=5)
    assert (created.address, created.kind, created.name, created.priority, created.created_at) \
        == ("team@example.test", ListKind.LIST, "The team", 5, 1_800_000_000.0)
    assert directory.add_members("TEAM@example.test", ["Ann@X.test", "ann@x.test"]) == (1, 0, 0)
    assert [m.address for m in directory.members("team@example.test")] == ["ann@x.test"]


@pytest.mark.parametrize("name", [
    "Evil\r\nBcc: victim@elsewhere.test", "Evil\nBcc: v@e.test", "Evil\rX: y", "nul\x00",
    "tab\there", "del\x7f", "nel\x85", "line\u2028separator", "para\u2029separator",
])
def test_names_with_line_breaks_or_controls_are_refused(directory: DirectoryService,
                                                        name: str) -> None:
    with pytest.raises(InvalidInput, match="control character"):
        directory.create_list("team@example.test", name=name)
    assert directory.find_list("team@example.test") is None
    directory.create_list("team@example.test", name="Team")
    with pytest.raises(InvalidInput, match="control character"):
        directory.update_list("team@example.test", name=name)
    assert directory.get_list("team@example.test").name == "Team"


@pytest.mark.parametrize("name", ["", "Équipe « dev »", 'Quote " and \\ backslash',
                                  "x" * NAME_MAX_LENGTH, "emoji \U0001F4EC"])
def test_ordinary_names_are_kept_as_given(directory: DirectoryService, name: str) -> None:
    assert directory.create_list("team@example.test", name=name).name == name
    assert directory.get_list("team@example.test").name == name


def test_bounds_of_name_priority_and_kind(directory: DirectoryService) -> None:
    with pytest.raises(InvalidInput, match="too long"):
        directory.create_list("a@example.test", name="x" * (NAME_MAX_LENGTH + 1))
    for priority in (PRIORITY_MIN - 1, PRIORITY_MAX + 1, 9223372036854775808):
        with pytest.raises(InvalidInput, match="priority"):
            directory.create_list("a@example.test", priority=priority)
    with pytest.raises(InvalidInput, match="kind"):
        directory.create_list("a@example.test", kind="newsletter")
    with pytest.raises(InvalidInput, match="reserved"):
        directory.create_list("a-bounces@example.test")
    with pytest.raises(InvalidInput, match="invalid address"):
        directory.create_list("not an address")
    with pytest.raises(InvalidInput, match="invalid"):
        directory.add_domain("bad domain\r\n")
    assert directory.lists() == []
    assert directory.create_list("a@example.test", priority=PRIORITY_MIN).priority == PRIORITY_MIN


def test_update_changes_only_what_is_given(directory: DirectoryService) -> None:
    directory.create_list("team@example.test", name="Team", priority=1)
    updated = directory.update_list("Team@example.test", priority=7)
    assert (updated.kind, updated.name, updated.priority) == (ListKind.LIST, "Team", 7)
    updated = directory.update_list("team@example.test", kind="alias", name="")
    assert (updated.kind, updated.name, updated.priority) == (ListKind.ALIAS, "", 7)
    assert directory.update_list("team@example.test") == updated
    assert directory.get_list("team@example.test") == updated
    with pytest.raises(NotFound) as missing:
        directory.update_list("nobody@example.test", name="x")
    assert (missing.value.kind, missing.value.name) == ("list", "nobody@example.test")


def test_errors_name_the_object_not_a_command(directory: DirectoryService) -> None:
    with pytest.raises(NotFound) as no_domain:
        directory.create_list("team@elsewhere.test")
    assert (no_domain.value.kind, no_domain.value.name) == ("domain", "elsewhere.test")
    assert str(no_domain.value) == "domain elsewhere.test is not served here"
    directory.create_list("team@example.test")
    with pytest.raises(Conflict) as busy:
        directory.remove_domain("example.test")
    assert busy.value.dependents == 1
    with pytest.raises(Conflict):
        directory.create_list("TEAM@example.test")
    with pytest.raises(InvalidInput):
        directory.add_members("team@example.test", ["ok@x.test", "not-an-address"])
    assert directory.members("team@example.test") == []
    assert directory.delete_list("team@example.test") == 0
    directory.remove_domain("example.test")
    assert directory.domains() == []


def test_members_keep_a_display_name_by_the_list_names_rule(directory: DirectoryService
                                                            ) -> None:
    directory.create_list("team@example.test")
    assert directory.add_members("team@example.test", ["Ann@x.test"], name="Ann Émile") \
        == (1, 0, 0)
    assert directory.import_members("team@example.test", [
        ("ben@x.test", "Ben"), ("ann@x.test", ""), ("cat@x.test", ""),
        ("cat@x.test", "Cat"), ("cat@x.test", "")]) == (2, 1, 0)  # an empty name keeps one
    assert directory.add_members("team@example.test", ["ben@x.test"], name="Benjamin") \
        == (0, 1, 1)
    assert {m.address: m.name for m in directory.members("team@example.test")} == {
        "ann@x.test": "Ann Émile", "ben@x.test": "Benjamin", "cat@x.test": "Cat"}

    for name in ("Evil\r\nBcc: victim@elsewhere.test", "tab\there", "nul\x00", "x\u2028y"):
        with pytest.raises(InvalidInput, match=r"invalid member name .* control character"):
            directory.add_members("team@example.test", ["dan@x.test"], name=name)
        with pytest.raises(InvalidInput, match="invalid member name"):
            directory.import_members("team@example.test", [("dan@x.test", "Dan"),
                                                           ("eve@x.test", name)])
    with pytest.raises(InvalidInput, match="member name too long"):
        directory.add_members("team@example.test", ["dan@x.test"],
                              name="x" * (NAME_MAX_LENGTH + 1))
    with pytest.raises(InvalidInput, match="one member"):
        directory.add_members("team@example.test", ["dan@x.test", "eve@x.test"], name="Two")
    assert len(directory.members("team@example.test")) == 3  # nothing of those added
    assert directory.add_members("team@example.test", ["dan@x.test"],
                                 name="x" * NAME_MAX_LENGTH).added == 1


def test_forward_style_is_stored_and_for_aliases_only(directory: DirectoryService) -> None:
    alias = directory.create_list("info@example.test", kind="alias")
    assert alias.forward_style is ForwardStyle.RESEND
    directory.update_list("Info@example.test", forward_style="fwd")
    assert directory.get_list("info@example.test").forward_style is ForwardStyle.FWD
    with pytest.raises(InvalidInput, match=r"invalid forward style 'quote'.*resend or fwd"):
        directory.update_list("info@example.test", forward_style="quote")
    # A list's copies carry its List-* fields on the original: fwd is refused for one,
    # and an alias set to fwd cannot become a list without going back to resend.
    directory.create_list("team@example.test")
    with pytest.raises(InvalidInput, match="is a list"):
        directory.update_list("team@example.test", forward_style="fwd")
    with pytest.raises(InvalidInput, match="is a list"):
        directory.update_list("info@example.test", kind="list")
    assert directory.update_list("info@example.test", kind="list",
                                 forward_style="resend").kind is ListKind.LIST


def test_a_list_or_alias_cannot_target_itself(directory: DirectoryService) -> None:
    directory.create_list("info@example.test", kind="alias")
    for target in ("Info@Example.test", "info+loop@example.test"):
        with pytest.raises(InvalidInput, match="cannot be its own member or target"):
            directory.add_members("info@example.test", ["ann@x.test", target])
    assert directory.members("info@example.test") == []  # all or none
    assert directory.add_members("info@example.test", ["info2@example.test"]) == (1, 0, 0)


def test_plus_tags_reach_the_untagged_address_unless_the_exact_one_exists(
        directory: DirectoryService, repo: Repository) -> None:
    info = directory.create_list("info@example.test", kind="alias")
    team = directory.create_list("team@example.test")
    assert repo.resolve("info+news@example.test").mailing_list == info
    assert repo.resolve("info+a.b_c=d-1@example.test").kind == "list"
    assert repo.resolve("team+x@example.test").mailing_list == team
    assert repo.resolve("team-bounces@example.test").kind == "bounces"
    for unknown in ("info+@example.test", "info+a+b@example.test", "info+a!b@example.test",
                    "info+" + "x" * 65 + "@example.test", "+tag@example.test",
                    "other+news@example.test"):
        assert repo.resolve(unknown).kind == "unknown_address", unknown
    # The exact address wins over the tag rule.
    exact = directory.create_list("info+news@example.test", kind="alias")
    assert repo.resolve("info+news@example.test").mailing_list == exact
    assert repo.resolve("info+other@example.test").mailing_list == info
