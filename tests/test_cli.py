"""The ``mailflow`` command as a user runs it: a real process, real exit codes."""

from __future__ import annotations

import json
import selectors
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mailflow.store import create_cli_engines
from mailflow.store.migrate import current_revision
from mailflow.testing.factories import make_list
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
    csv_file.write_text('name,email\nCat,cat@x.test\n"Dan, Jr.",dan@x.test\nAnn,ann@x.test\n')
    assert ok(cli, "member", "import", "team@example.test", str(csv_file)) == (
        "imported 2 member(s) into team@example.test; 1 already there (1 with a new name)\n")
    ok(cli, "member", "remove", "team@example.test", "ann@x.test")
    assert "already there (1 with a new name)" in ok(
        cli, "member", "add", "team@example.test", "ben@x.test", "--name", "Ben Émile")
    members = json.loads(ok(cli, "member", "ls", "team@example.test", "--json"))
    assert [(m["address"], m["name"]) for m in members] == [
        ("ben@x.test", "Ben Émile"), ("cat@x.test", "Cat"), ("dan@x.test", "Dan, Jr.")]

    ok(cli, "list", "delete", "team@example.test")
    ok(cli, "list", "delete", "fwd@example.test")
    ok(cli, "domain", "remove", "example.test")
    assert ok(cli, "list", "ls") == ""


def test_bad_csv_imports_nothing_and_says_which_rows(cli: RelayProcess, tmp_path: Path) -> None:
    ok(cli, "domain", "add", "example.test")
    ok(cli, "list", "create", "team@example.test")
    csv_file = tmp_path / "members.csv"
    csv_file.write_text('email,name\nok@x.test,Ok\nnot an address,\n'
                        'also@x.test,"Evil\r\nBcc: v@e.test"\n@broken,\n', newline="")
    result = cli.cli("member", "import", "team@example.test", str(csv_file))
    assert result.returncode == 2
    assert "3 invalid row(s), nothing imported" in result.stderr
    assert "line 3: invalid address" in result.stderr and "line 5" in result.stderr
    # (the file is read as text: the CR LF inside the quoted cell arrives as LF)
    assert "line 4: invalid member name 'Evil\\nBcc: v@e.test': it contains the " \
           "control character U+000A" in result.stderr
    assert json.loads(ok(cli, "member", "list", "team@example.test", "--json")) == []


@pytest.mark.parametrize(("args", "code", "words"), [
    (("list", "create", "team@unknown.test"), 3, "mailflow domain add unknown.test"),
    (("member", "add", "nolist@example.test", "a@x.test"), 3, "no list or alias"),
    (("member", "add", "team@example.test", "not-an-address"), 2, "invalid address"),
    (("domain", "add", "example.test"), 4, "exists already"),
    (("domain", "remove", "example.test"), 4, "still has 1 list"),
    (("member", "remove", "team@example.test", "zed@x.test"), 3, "not members"),
    (("list", "create", "team-bounces@example.test"), 2, "reserved"),
    (("member", "add", "team@example.test", "a@x.test", "b@x.test", "--name", "A"), 2,
     "a display name is for one member"),
    (("list", "create", "big@example.test", "--priority", "9223372036854775808"), 2,
     "must be between -1000 and 1000"),
])
def test_errors_go_to_stderr_with_an_exit_status(cli: RelayProcess, args: tuple[str, ...],
                                                 code: int, words: str) -> None:
    ok(cli, "domain", "add", "example.test")
    ok(cli, "list", "create", "team@example.test")
    result = cli.cli(*args)
    assert result.returncode == code
    assert words in result.stderr
    assert result.stdout == ""


def test_an_idn_domain_is_stored_as_a_labels_and_an_invalid_one_explained(
        cli: RelayProcess) -> None:
    assert ok(cli, "domain", "add", "ÜNÏCODE.example", "a.test").splitlines() == [
        "added domain xn--ncode-cta3g.example (ünïcode.example)", "added domain a.test"]
    result = cli.cli("domain", "add", "a\u200db.example")
    assert result.returncode == 2
    assert result.stderr == ("mailflow: error: invalid domain 'a\\u200db.example': Joiner "
                             "U+200D not allowed at position 2 in 'a\\u200db'\n")


def test_list_update_and_names_that_would_inject_header_fields(cli: RelayProcess) -> None:
    ok(cli, "domain", "add", "example.test")
    ok(cli, "list", "create", "team@example.test", "--name", "Team", "--priority", "2")
    assert ok(cli, "list", "update", "Team@example.test", "--name", "The team",
              "--kind", "alias") == "updated alias team@example.test\n"
    assert ok(cli, "list", "update", "team@example.test", "--forward-style", "fwd") == (
        "updated alias team@example.test\n")
    shown = json.loads(ok(cli, "list", "show", "team@example.test", "--json"))
    assert (shown["kind"], shown["name"], shown["priority"], shown["forward_style"]) == (
        "alias", "The team", 2, "fwd")
    itself = cli.cli("member", "add", "team@example.test", "Team+x@example.test")
    assert (itself.returncode, itself.stdout) == (2, "")
    assert itself.stderr == ("mailflow: error: team@example.test cannot be its own member or "
                             "target: its mail would come back to it\n")

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


def test_block_and_allow_entries(tmp_path: Path) -> None:
    """On SQLite only: the store's side is tests/test_blocklist.py, on both backends."""
    cli = RelayProcess(tmp_path / "relay")
    cli.init()
    with cli.repository() as repo:
        make_list(repo, "team@example.test")
    assert ok(cli, "block", "add", "*@Spam.example") == (
        "blocked *@spam.example for every recipient\n")
    assert ok(cli, "block", "add", "noreply@*.example", "--for", "Example.TEST") == (
        "blocked noreply@*.example for example.test\n")
    assert ok(cli, "allow", "add", "news@example.*", "--for", "Team@example.test") == (
        "allowed news@example.* for team@example.test\n")
    listed = json.loads(ok(cli, "block", "ls", "--json"))
    assert [(e["pattern"], e["scope"], e["for"]) for e in listed] == [
        ("*@spam.example", "global", None), ("noreply@*.example", "domain", "example.test")]
    assert isinstance(listed[0]["created_at"], float)

    bad = cli.cli("block", "add", "spam.example")
    assert (bad.returncode, bad.stdout) == (2, "")
    assert bad.stderr == ("mailflow: error: invalid sender pattern 'spam.example': it "
                          "matches no address; for a whole domain write *@spam.example\n")
    missing = cli.cli("allow", "remove", "news@example.*")  # not without its --for
    assert missing.returncode == 3
    assert missing.stderr == ("mailflow: error: news@example.* is not on the allow list for "
                              "every recipient; see `mailflow allow ls`\n")
    assert ok(cli, "block", "remove", "*@spam.example") == (
        "removed block entry *@spam.example for every recipient\n")
    assert ok(cli, "block", "ls") == "noreply@*.example\tdomain\texample.test\n"


def test_autoreply_set_show_clear_and_echo_lists(tmp_path: Path) -> None:
    """On SQLite only: the store's side is tests/test_autoreply.py, on both backends."""
    cli = RelayProcess(tmp_path / "relay")
    cli.init()
    with cli.repository() as repo:
        make_list(repo, "team@example.test")
    assert ok(cli, "list", "create", "echo@example.test", "--kind", "echo") == (
        "created echo echo@example.test\n")
    assert ok(cli, "autoreply", "set", "Team@example.test", "--body", "Away, $sender.",
              "--starts", "2026-12-24", "--ends", "2027-01-02T09:00+01:00",
              "--once-per-days", "3") == "auto-reply set for team@example.test\n"
    assert json.loads(ok(cli, "autoreply", "show", "team@example.test", "--json")) == {
        "address": "team@example.test", "subject": "Auto: $subject", "body": "Away, $sender.",
        "starts": "2026-12-24T00:00:00+00:00", "ends": "2027-01-02T08:00:00+00:00",
        "once_per_days": 3}
    bad = cli.cli("autoreply", "set", "team@example.test", "--body", "x",
                  "--subject", "Away\r\nBcc: evil@x.test")
    assert (bad.returncode, bad.stdout) == (2, "")
    assert bad.stderr.startswith("mailflow: error: invalid subject: it contains the "
                                 "control character U+000D")
    assert ok(cli, "autoreply", "clear", "team@example.test") == (
        "auto-reply cleared for team@example.test\n")
    gone = cli.cli("autoreply", "show", "team@example.test")
    assert gone.returncode == 3 and "has no auto-reply" in gone.stderr


def test_queue_show_json_shape(cli: RelayProcess) -> None:
    state = json.loads(ok(cli, "queue", "show", "--json"))
    assert state["counts"] == {"queued": 0, "in_flight": 0, "deferred": 0, "delivered": 0,
                               "failed": 0, "held": 0, "deleted": 0}
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


def test_init_makes_the_srs_secret_once(cli: RelayProcess) -> None:
    ok(cli, "init")
    with cli.repository() as repo:
        made = repo.ensure_meta("srs_secret", "not this")
    assert made != "not this" and len(made) >= 32
    ok(cli, "init")
    with cli.repository() as repo:
        assert repo.ensure_meta("srs_secret", "nor this") == made


def test_member_import_of_a_non_utf8_or_headless_file_is_explained(
        cli: RelayProcess, tmp_path: Path) -> None:
    ok(cli, "domain", "add", "example.test")
    ok(cli, "list", "create", "team@example.test")
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("email,name\nzoe@x.test,Zoë\n".encode("latin-1"))
    result = cli.cli("member", "import", "team@example.test", str(latin1))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("mailflow: error: ") and "Traceback" not in result.stderr
    assert "not UTF-8" in result.stderr and "latin1.csv" in result.stderr

    wrong = tmp_path / "wrong.csv"
    wrong.write_text("mail,fullname\nzoe@x.test,Zoe\n")
    result = cli.cli("member", "import", "team@example.test", str(wrong))
    assert result.returncode == 2
    assert "has no email column" in result.stderr and "`email,name`" in result.stderr
    assert json.loads(ok(cli, "member", "list", "team@example.test", "--json")) == []

    named = tmp_path / "named.csv"
    named.write_text("email,name\nzoe@x.test,Zoe\n")
    assert "imported 1" in ok(cli, "member", "import", "team@example.test", str(named))


def test_serve_refuses_a_store_that_is_not_there(database_url: str, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    sqlite = database_url.startswith("sqlite")
    relay = RelayProcess(wrong, database_url="" if sqlite else database_url)  # SQLite: data dir
    result = relay.cli("serve", timeout=30)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("mailflow: error: no relay store at ")
    assert "mailflow init" in result.stderr and "serve --init" in result.stderr
    if sqlite:
        assert str(wrong / "mailflow.db") in result.stderr and not wrong.exists()
    else:
        engines = create_cli_engines(database_url)
        try:
            assert current_revision(engines.writer) is None  # nothing was created
        finally:
            engines.dispose()

    # With --init it makes the store and runs, as `mailflow init` then `serve` would.
    wrong.mkdir()
    with (wrong / "serve.log").open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "mailflow", "serve", "--init"],
                                   env=relay.env, stdout=subprocess.PIPE, stderr=log,
                                   stdin=subprocess.DEVNULL)
    try:
        assert process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + 30
            line = b""
            while not line.endswith(b"\n") and time.monotonic() < deadline:
                if selector.select(deadline - time.monotonic()):
                    chunk = process.stdout.read1(4096)
                    if not chunk:
                        break
                    line += chunk
        assert line.startswith(b"MailFlow Relay is running"), (wrong / "serve.log").read_text()
    finally:
        process.terminate()
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()
    assert relay.cli("list", "ls").returncode == 0


def test_a_store_that_cannot_be_opened_is_named(tmp_path: Path) -> None:
    # As root no file mode stops SQLite, so the store is a path it cannot open as a file.
    relay = RelayProcess(tmp_path / "data")
    (tmp_path / "data" / "mailflow.db").mkdir(parents=True)
    result = relay.cli("list", "ls")
    assert result.returncode == 1
    assert result.stderr.startswith("mailflow: error: database error: unable to open database "
                                    f"file {tmp_path / 'data' / 'mailflow.db'}: check that ")
    assert "permissions" in result.stderr or "read and write" in result.stderr

    piped = relay.cli("pipe", "--to", "team@example.test", input=b"Subject: x\n\nhi\n")
    assert piped.returncode == 75 and piped.stdout == ""
    assert piped.stderr.count("\n") == 1 and "sqlalche.me" not in piped.stderr
    assert piped.stderr.startswith("4.3.0 ") and str(tmp_path / "data") in piped.stderr


@pytest.mark.postgres
def test_pipe_to_an_unreachable_postgresql_prints_one_line(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path, database_url="postgresql://postgres@127.0.0.1:1/test")
    piped = relay.cli("pipe", "--to", "team@example.test", input=b"Subject: x\n\nhi\n")
    assert piped.returncode == 75 and piped.stdout == ""
    assert piped.stderr.count("\n") == 1 and "sqlalche.me" not in piped.stderr
    assert "127.0.0.1:1" in piped.stderr and "check that the database server" in piped.stderr
