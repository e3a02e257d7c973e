"""The ``mailflow`` command as a user runs it: a real process, real exit codes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from mailflow.testing.relay import RelayProcess


@pytest.fixture
def cli(make_relay: Callable[..., RelayProcess]) -> RelayProcess:
    return make_relay()  # initialised store, relay not running


def ok(relay: RelayProcess, *args: str) -> str:
    result = relay.cli(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_manage_domains_lists_and_members(cli: RelayProcess, tmp_path: Path) -> None:
    ok(cli, "domain", "add", "example.test")
    assert ok(cli, "domain", "list").split() == ["example.test"]
    ok(cli, "list", "create", "Team@Example.test", "--name", "The team")
    ok(cli, "list", "create", "fwd@example.test", "--kind", "alias")
    ok(cli, "member", "add", "team@example.test", "ann@x.test", "BEN@x.test")
    ok(cli, "member", "add", "fwd@example.test", "target@elsewhere.test")

    members = json.loads(ok(cli, "member", "list", "team@example.test", "--json"))
    assert [(m["address"], m["status"]) for m in members] == [
        ("ann@x.test", "active"), ("ben@x.test", "active")]
    shown = json.loads(ok(cli, "list", "show", "team@example.test", "--json"))
    assert shown["kind"] == "list" and shown["members"] == 2
    assert shown["bounces_address"] == "team-bounces@example.test"
    listing = json.loads(ok(cli, "list", "ls", "--json"))
    assert {row["address"]: row["members"] for row in listing} == {
        "fwd@example.test": 1, "team@example.test": 2}

    csv_file = tmp_path / "members.csv"
    csv_file.write_text("name,email\nCat,cat@x.test\nDan,dan@x.test\nAnn,ann@x.test\n")
    assert "imported 2" in ok(cli, "member", "import", "team@example.test", str(csv_file))
    ok(cli, "member", "remove", "team@example.test", "ann@x.test")
    members = json.loads(ok(cli, "member", "list", "team@example.test", "--json"))
    assert [m["address"] for m in members] == ["ben@x.test", "cat@x.test", "dan@x.test"]

    ok(cli, "list", "delete", "team@example.test")
    ok(cli, "list", "delete", "fwd@example.test")
    ok(cli, "domain", "remove", "example.test")
    assert ok(cli, "list", "ls") == ""


def test_bad_csv_imports_nothing_and_says_which_rows(cli: RelayProcess, tmp_path: Path) -> None:
    ok(cli, "domain", "add", "example.test")
    ok(cli, "list", "create", "team@example.test")
    csv_file = tmp_path / "members.csv"
    csv_file.write_text("ok@x.test\nnot an address\nalso@x.test\n@broken\n")
    result = cli.cli("member", "import", "team@example.test", str(csv_file))
    assert result.returncode == 2
    assert "line 2" in result.stderr and "line 4" in result.stderr
    assert json.loads(ok(cli, "member", "list", "team@example.test", "--json")) == []


@pytest.mark.parametrize(("args", "code", "words"), [
    (("list", "create", "team@unknown.test"), 3, "mailflow domain add unknown.test"),
    (("member", "add", "nolist@example.test", "a@x.test"), 3, "no list or alias"),
    (("member", "add", "team@example.test", "not-an-address"), 2, "invalid address"),
    (("domain", "add", "example.test"), 4, "exists already"),
    (("domain", "remove", "example.test"), 4, "still has 1 list"),
    (("member", "remove", "team@example.test", "zed@x.test"), 3, "not members"),
    (("list", "create", "team-bounces@example.test"), 2, "reserved"),
])
def test_errors_go_to_stderr_with_an_exit_status(cli: RelayProcess, args: tuple[str, ...],
                                                 code: int, words: str) -> None:
    ok(cli, "domain", "add", "example.test")
    ok(cli, "list", "create", "team@example.test")
    result = cli.cli(*args)
    assert result.returncode == code
    assert words in result.stderr
    assert result.stdout == ""


def test_list_update_and_names_that_would_inject_header_fields(cli: RelayProcess) -> None:
    ok(cli, "domain", "add", "example.test")
    ok(cli, "list", "create", "team@example.test", "--name", "Team", "--priority", "2")
    assert ok(cli, "list", "update", "Team@example.test", "--name", "The team",
              "--kind", "alias") == "updated alias team@example.test\n"
    shown = json.loads(ok(cli, "list", "show", "team@example.test", "--json"))
    assert (shown["kind"], shown["name"], shown["priority"]) == ("alias", "The team", 2)

    evil = "Evil\r\nBcc: victim@elsewhere.test"
    for args in (("list", "create", "evil@example.test", "--name", evil),
                 ("list", "update", "team@example.test", "--name", evil),
                 ("list", "update", "team@example.test", "--priority", "9223372036854775808")):
        result = cli.cli(*args)
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr.startswith("mailflow: error: ")
        assert "control character" in result.stderr or "priority" in result.stderr
    listing = json.loads(ok(cli, "list", "ls", "--json"))
    assert [(row["address"], row["name"]) for row in listing] == [
        ("team@example.test", "The team")]

    nothing = cli.cli("list", "update", "team@example.test")
    assert nothing.returncode == 2 and "nothing to update" in nothing.stderr
    missing = cli.cli("list", "update", "nobody@example.test", "--priority", "1")
    assert missing.returncode == 3 and "see `mailflow list ls`" in missing.stderr


def test_queue_show_json_shape(cli: RelayProcess) -> None:
    state = json.loads(ok(cli, "queue", "show", "--json"))
    assert state["counts"] == {"queued": 0, "in_flight": 0, "deferred": 0, "delivered": 0,
                               "failed": 0}
    assert state["deliveries"] == []


def test_missing_store_and_bad_settings_are_explained(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path / "empty")
    result = relay.cli("list", "ls")
    assert result.returncode == 1 and "mailflow init" in result.stderr
    relay.env["MAILFLOW_SMTP_RELAY"] = "http://nope"
    result = relay.cli("list", "ls")
    assert result.returncode == 1
    assert "MAILFLOW_SMTP_RELAY" in result.stderr
    config = tmp_path / "mailflow.toml"
    config.write_text('egress = "carrier-pigeon"\n')
    result = relay.cli("--config", str(config), "list", "ls")
    assert result.returncode == 1 and "egress" in result.stderr
    result = relay.cli("--config", str(tmp_path / "missing.toml"), "list", "ls")
    assert result.returncode == 1 and "does not exist" in result.stderr
    # What the hint says to do works: `mailflow init` makes the store (the fixtures
    # initialise theirs in-process, through the same function).
    del relay.env["MAILFLOW_SMTP_RELAY"]
    result = relay.cli("init")
    assert result.returncode == 0 and result.stdout.startswith("initialised "), result.stderr
    assert (tmp_path / "empty" / "mailflow.db").is_file()
    assert (tmp_path / "empty" / "blobs").is_dir()
    assert relay.cli("list", "ls").returncode == 0


def test_init_example_is_idempotent(cli: RelayProcess) -> None:
    ok(cli, "init", "--example")
    ok(cli, "init", "--example")
    members = json.loads(ok(cli, "member", "list", "team@example.test", "--json"))
    assert [m["address"] for m in members] == ["alice@example.test", "bob@example.test"]
