"""End to end through a real Postfix: smtplib -> Postfix -> relay -> aiosmtpd sink.

Each test runs a private Postfix (mailflow.testing.postfix.PostfixInstance) on loopback
ports, next to a relay in a child process (SQLite).  Postfix hands mail for ``lists.test``
to the relay by one of the ways docs/postfix.md describes:

* ``pipe``: a pipe(8) transport running ``python -m mailflow pipe --url`` (HTTP ingress)
* ``pipe-local``: the same without ``--url``, writing into the relay's store directly
* ``curl``: a pipe(8) transport running ``contrib/postfix/mailflow-curl.sh``
* ``lmtp``: Postfix's LMTP client to the relay's LMTP listener
* content filter: ``content_filter`` to the relay's SMTP port, the relay reinjecting into
  a second Postfix smtpd that bypasses the filter

Mail for ``outside.test`` (the posters' domain, so bounces too) goes to a second sink;
no DNS is ever asked.  Without Postfix (or without root) the tests skip, unless
MAILFLOW_TEST_REQUIRE_SERVICES=1, where they fail.  MAILFLOW_KEEP_POSTFIX=1 keeps each
instance's folder (/tmp/mailflow-postfix-*: main.cf, master.cf, maillog) for a look.
"""

from __future__ import annotations

import os
import pwd
import shutil
import smtplib
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mailflow import headers
from mailflow.testing.factories import make_list, make_message
from mailflow.testing.ports import free_port
from mailflow.testing.postfix import (
    PIPE_USER,
    PostfixInstance,
    PythonCommand,
    postfix_problem,
    python_for_user,
)
from mailflow.testing.relay import RelayProcess
from mailflow.testing.sink import SmtpSink

REQUIRE_SERVICES = os.environ.get("MAILFLOW_TEST_REQUIRE_SERVICES") == "1"
PROJECT = Path(__file__).resolve().parent.parent
CURL_SCRIPT = PROJECT / "contrib" / "postfix" / "mailflow-curl.sh"

LIST = "team@lists.test"
MEMBERS = ["ann@members.test", "ben@members.test"]
POSTER = "poster@outside.test"
PSK = "postfix-test-key-6b1f0c"

RELAY_SETTINGS = {
    "MAILFLOW_EGRESS": "smtp",
    "MAILFLOW_RETRY_INITIAL_DELAY": "0.2",
    "MAILFLOW_RETRY_MULTIPLIER": "2",
    "MAILFLOW_RETRY_MAX_DELAY": "1",
    "MAILFLOW_MAINTENANCE_INTERVAL": "0.5",
    "MAILFLOW_SMTP_TIMEOUT": "10",
    "MAILFLOW_POLL_INTERVAL": "0.2",
    "MAILFLOW_INGRESS_PSK": PSK,
}

# The pipe(8) service for every pipe variant.  flags=q quotes odd local parts for the
# command line; no R (Return-Path:), D (Delivered-To:) or F (From_ line), because they
# would change the message the relay stores.  null_sender= passes the null sender as ""
# rather than the default "MAILER-DAEMON".  One recipient per command: the exit status
# is per invocation, so a bounce then names exactly the recipient that failed.
PIPE_SERVICE = """\
mailflow  unix  -       n       n       -       -       pipe
  flags=q user={user} null_sender= argv={command} {arguments}"""
PIPE_SETTINGS = {"mailflow_destination_recipient_limit": "1"}

# Content-filter mode: the filter transport (Postfix's SMTP client to the relay) and the
# smtpd the relay reinjects into.  "-o content_filter=" keeps reinjected mail from
# looping through the filter again; no_address_mappings keeps virtual/canonical
# rewriting from being applied twice.
CONTENT_FILTER_SERVICES = "\n".join([
    "mailflow-filter unix -  -       n       -       10      smtp",
    "  -o smtp_send_xforward_command=no",
    "  -o smtp_tls_security_level=none",
    "127.0.0.1:{reinject_port} inet n -  n       -       -       smtpd",
    "  -o content_filter=",
    "  -o receive_override_options=no_unknown_recipient_checks,no_header_body_checks,"
    "no_milters,no_address_mappings",
    "  -o smtpd_client_restrictions=",
    "  -o smtpd_helo_restrictions=",
    "  -o smtpd_sender_restrictions=",
    "  -o smtpd_recipient_restrictions=permit_mynetworks,reject",
    "  -o smtpd_relay_restrictions=permit_mynetworks,reject",
    "  -o mynetworks=127.0.0.0/8",
])


def _problem_or_none(problem: str | None) -> None:
    if problem is None:
        return
    if REQUIRE_SERVICES:
        pytest.fail(f"{problem} (MAILFLOW_TEST_REQUIRE_SERVICES=1)")
    pytest.skip(problem)


@pytest.fixture(scope="session")
def postfix_available() -> None:
    _problem_or_none(postfix_problem())


@pytest.fixture(scope="session")
def pipe_python(postfix_available: None) -> Iterator[PythonCommand]:
    """An interpreter that the pipe user can run ``-m mailflow`` with."""
    scratch = Path(tempfile.mkdtemp(prefix="mailflow-pipe-python-"))
    scratch.chmod(0o755)
    try:
        found = python_for_user(PIPE_USER, scratch)
        if found is None:
            _problem_or_none(f"no Python that user {PIPE_USER!r} can run mailflow with "
                             f"({os.path.realpath(sys.executable)} is not executable for it,"
                             " and no system python of the same version works)")
        assert found is not None
        yield found
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture
def postfix(postfix_available: None) -> Iterator[PostfixInstance]:
    """A configured, not yet started private Postfix; stopped and deleted afterwards."""
    instance = PostfixInstance()
    try:
        yield instance
    finally:
        instance.stop()
        if not os.environ.get("MAILFLOW_KEEP_POSTFIX"):
            instance.remove()


@pytest.fixture
def outside() -> Iterator[SmtpSink]:
    """Where Postfix sends mail for outside.test: the posters, so bounces land here."""
    with SmtpSink() as running:
        yield running


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder outside pytest's 0700 tmp tree, so the pipe user can reach into it."""
    path = Path(tempfile.mkdtemp(prefix="mailflow-shared-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_relay(tmp_path: Path, sink: SmtpSink) -> Iterator[Callable[..., RelayProcess]]:
    """Build, init and fill (not start) a SQLite relay with the list ``LIST``."""
    made: list[RelayProcess] = []

    def factory(data_dir: Path | None = None, policy: bool = False,
                **settings: str) -> RelayProcess:
        env = {**RELAY_SETTINGS, "MAILFLOW_SMTP_RELAY": sink.url, **settings}
        relay = RelayProcess(data_dir or tmp_path / f"relay{len(made)}", settings=env,
                             lmtp=True, policy=policy)
        made.append(relay)
        relay.init()
        with relay.repository() as repo:
            make_list(repo, LIST, MEMBERS, name="Team")
        return relay

    yield factory
    for relay in made:
        relay.stop()


def route(postfix: PostfixInstance, outside: SmtpSink, lists_nexthop: str,
          **more: str) -> None:
    """Accept mail for lists.test and send it to ``lists_nexthop``; outside.test to a sink."""
    routes = {"lists.test": lists_nexthop, "outside.test": f"smtp:[127.0.0.1]:{outside.port}",
              **more}
    postfix.main_settings({"relay_domains": "lists.test",
                           "transport_maps": postfix.write_map("transport", routes)})


def start_both(kind: str, postfix: PostfixInstance, make_relay: Callable[..., RelayProcess],
               shared_dir: Path, outside: SmtpSink,
               pipe_python: Callable[[], PythonCommand]) -> RelayProcess:
    """A relay (its store shared with the pipe user for ``pipe-local``) behind Postfix
    through transport ``kind``, both started."""
    relay = make_relay(shared_dir / "relay" if kind == "pipe-local" else None)
    use_transport(kind, postfix, relay, outside, pipe_python)
    relay.start()
    postfix.start()
    return relay


def use_transport(kind: str, postfix: PostfixInstance, relay: RelayProcess, outside: SmtpSink,
                  pipe_python: Callable[[], PythonCommand], key: str = PSK) -> None:
    """Make Postfix hand lists.test mail to ``relay`` through transport ``kind``."""
    if kind == "lmtp":
        route(postfix, outside, f"lmtp:inet:127.0.0.1:{relay.lmtp_port}")
        return
    url = f"http://127.0.0.1:{relay.http_port}"
    if kind == "curl":
        if not CURL_SCRIPT.exists():
            pytest.fail(f"{CURL_SCRIPT} does not exist yet")
        key_file = postfix.write_file("ingress.psk", key + "\n")
        # Installed where the pipe user can run it, as docs/postfix.md says.
        installed = postfix.write_file("mailflow-curl.sh", CURL_SCRIPT.read_text(), mode=0o755)
        command = postfix.pipe_wrapper(
            "mailflow-curl", [str(installed), url],
            {"PATH": "/usr/bin:/bin", "MAILFLOW_INGRESS_PSK_FILE": str(key_file)})
        arguments = "${sender} ${recipient}"
    else:
        python = pipe_python()
        if kind == "pipe":
            env = {**python.env, "MAILFLOW_INGRESS_PSK": key}
            argv = [*python.argv, "-m", "mailflow", "pipe", "--url", url]
        elif kind == "pipe-local":
            env = {**python.env, **{k: v for k, v in relay.env.items()
                                    if k.startswith("MAILFLOW_")}}
            argv = [*python.argv, "-m", "mailflow", "pipe"]
            share_with_pipe_user(relay.data_dir)
        else:
            raise ValueError(kind)
        command = postfix.pipe_wrapper("mailflow-pipe", argv, env)
        arguments = "--from ${sender} --to ${recipient}"
    postfix.add_master_entry(PIPE_SERVICE.format(user=PIPE_USER, command=command,
                                                 arguments=arguments))
    postfix.main_settings(PIPE_SETTINGS)
    route(postfix, outside, "mailflow:")


def share_with_pipe_user(data_dir: Path) -> None:
    """Let the pipe user write the relay's SQLite store and blobs (local-store mode).

    Owned by the pipe user: SQLite running as root gives the -wal/-shm files it creates
    the owner and mode of the database file, so the relay (root) and ``mailflow pipe``
    (nobody) can share them.
    """
    user = pwd.getpwnam(PIPE_USER)
    for folder, dirs, files in os.walk(data_dir):
        for name in [*dirs, *files]:
            path = os.path.join(folder, name)
            os.chown(path, user.pw_uid, user.pw_gid)
            os.chmod(path, 0o777 if os.path.isdir(path) else 0o666)
    os.chown(data_dir, user.pw_uid, user.pw_gid)
    os.chmod(data_dir, 0o777)


@pytest.fixture
def lazy_python(request: pytest.FixtureRequest) -> Callable[[], PythonCommand]:
    """``pipe_python`` only for the variants that run Python as the pipe user."""
    return lambda: request.getfixturevalue("pipe_python")


def with_policy_service(postfix: PostfixInstance, make_relay: Callable[..., RelayProcess],
                        outside: SmtpSink) -> RelayProcess:
    """Start a relay with its policy service and a Postfix that asks it at RCPT time."""
    relay = make_relay(policy=True).start()
    route(postfix, outside, f"lmtp:inet:127.0.0.1:{relay.lmtp_port}")
    postfix.main_settings({
        "smtpd_recipient_restrictions":
            f"check_policy_service inet:127.0.0.1:{relay.policy_port}",
        "smtpd_policy_service_timeout": "10s",
    })
    postfix.start()
    return relay


def post(postfix: PostfixInstance, rcpts: list[str], data: bytes,
         sender: str = POSTER) -> dict:
    with smtplib.SMTP("127.0.0.1", postfix.smtp_port, timeout=30) as client:
        return client.sendmail(sender, rcpts, data)


def assert_list_copies(sink: SmtpSink, data: bytes, relay: RelayProcess,
                       postfix: PostfixInstance, list_name: str = "Team") -> None:
    """One copy per member, exactly, with the list headers and the body unchanged.

    "Exactly" without sleeping: once the relay has stored one message and settled, and
    Postfix's queue is empty, neither has anything left that could send another copy.
    """
    got = sink.wait_for_recipients(len(MEMBERS), timeout=30)
    assert sorted(got) == sorted(MEMBERS)
    assert relay.wait_settled() == {"queued": 0, "in_flight": 0, "deferred": 0,
                                    "delivered": len(MEMBERS), "failed": 0}
    assert sum(relay.counts()[0].values()) == 1  # Postfix handed the post over once
    assert postfix.wait_for_queue() == []
    assert sorted(sink.recipients()) == sorted(MEMBERS)
    _, body = headers.split_message(data)
    for message in sink.messages:
        assert message.mail_from == "team-bounces@lists.test"
        header, arrived_body = headers.split_message(message.content)
        assert headers.field_values(header, "List-Id") == [f'"{list_name}" <team.lists.test>']
        assert headers.field_values(header, "Subject") == ["through postfix"]
        assert arrived_body == body


def deferred_entry(queue: list[dict], rcpt: str) -> dict | None:
    """The recipient's queue entry once a delivery attempt was deferred.

    With the test's one-second backoff a deferred message moves back and forth between
    the deferred and the incoming/active queues; the delay reason stays with it.
    """
    for entry in queue:
        for recipient in entry["recipients"]:
            if recipient["address"] == rcpt and recipient.get("delay_reason") and \
                    entry["queue_name"] in ("deferred", "incoming", "active"):
                return recipient
    return None


def message() -> bytes:
    return make_message(LIST, subject="through postfix",
                        body=b"Body line one.\r\n.dot line\r\n")


# -- the harness on its own: no relay features needed -------------------------------------


def test_harness_postfix_relays_to_a_sink(postfix: PostfixInstance, outside: SmtpSink) -> None:
    postfix.main_settings({"transport_maps": postfix.write_map(
        "transport", {"outside.test": f"smtp:[127.0.0.1]:{outside.port}"})})
    postfix.start()
    assert postfix.smtp_port != 25
    post(postfix, ["friend@outside.test"], make_message("friend@outside.test"),
         sender="someone@client.test")
    assert outside.wait_for_recipients(1) == ["friend@outside.test"]
    postfix.wait_for_log(r"to=<friend@outside\.test>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:"
                         rf"{outside.port}, .*status=sent")
    assert postfix.wait_for_queue() == []
    # Only loopback: nothing listens on another address for this instance, and mail for
    # a domain no test routed is refused instead of being looked up in the DNS.
    assert "inet_interfaces = loopback-only" in postfix.postconf("-n")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        post(postfix, ["someone@unrouted.test"], make_message("someone@unrouted.test"))
    code, text = refused.value.recipients["someone@unrouted.test"]
    assert (code, text[:5]) == (550, b"5.4.4")


def test_harness_defers_and_flush_delivers(postfix: PostfixInstance) -> None:
    dead = free_port()
    postfix.main_settings({"transport_maps": postfix.write_map(
        "transport", {"outside.test": f"smtp:[127.0.0.1]:{dead}"})})
    postfix.start()
    post(postfix, ["friend@outside.test"], make_message("friend@outside.test"))
    queue = postfix.wait_for_queue(lambda q: deferred_entry(q, "friend@outside.test"))
    assert "Connection refused" in deferred_entry(queue, "friend@outside.test")["delay_reason"]
    with SmtpSink(port=dead) as late:
        postfix.flush()
        assert late.wait_for_recipients(1) == ["friend@outside.test"]
        assert postfix.wait_for_queue() == []  # nothing left that could come twice
        assert len(late.messages) == 1


def test_harness_pipe_transport_runs_as_nobody(postfix: PostfixInstance,
                                               outside: SmtpSink) -> None:
    """The pipe(8) wiring every pipe variant relies on: user, environment, argv, exits."""
    out = postfix.dir / "out"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    script = postfix.write_file("probe.sh", f"""#!/bin/sh
case "$4" in
    tempfail@*) echo "4.3.0 probe says later"; exit 75 ;;
    nouser@*) echo "5.1.1 probe knows no $4"; exit 67 ;;
esac
cat > {out}/message
printf '%s\\n' "$@" > {out}/args
id -un > {out}/user
echo "$PROBE_SETTING" > {out}/env
""", mode=0o755)
    command = postfix.pipe_wrapper("probe-wrapper", [str(script)], {"PROBE_SETTING": "a b'c"})
    postfix.add_master_entry(PIPE_SERVICE.format(user=PIPE_USER, command=command,
                                                 arguments="--from ${sender} --to ${recipient}"))
    postfix.main_settings(PIPE_SETTINGS)
    route(postfix, outside, "mailflow:")
    postfix.start()

    data = message()
    post(postfix, ["ok@lists.test"], data)
    postfix.wait_for_log(r"to=<ok@lists\.test>, relay=mailflow, .*status=sent")
    assert (out / "args").read_text().split("\n")[:4] == ["--from", POSTER, "--to",
                                                          "ok@lists.test"]
    assert (out / "user").read_text().strip() == PIPE_USER
    assert (out / "env").read_text().strip() == "a b'c"
    # pipe(8) hands over the message with LF line ends, its own Received: field first
    # (and a Date: field, which the poster left out); no Return-Path, no From_ line.
    delivered = (out / "message").read_bytes().replace(b"\n", b"\r\n")
    assert delivered.startswith(b"Received: from ")
    header, body = headers.split_message(delivered)
    assert body == headers.split_message(data)[1]
    for line in headers.split_message(data)[0].split(b"\r\n"):
        assert line in header

    post(postfix, ["tempfail@lists.test"], data)
    queue = postfix.wait_for_queue(lambda q: deferred_entry(q, "tempfail@lists.test"))
    assert "probe says later" in deferred_entry(queue, "tempfail@lists.test")["delay_reason"]

    post(postfix, ["nouser@lists.test"], data)
    postfix.wait_for_log(r"to=<nouser@lists\.test>, relay=mailflow, .*dsn=5\.1\.1, "
                         r"status=bounced \(probe knows no nouser@lists\.test ?\)")
    assert outside.wait_for_recipients(1) == [POSTER]
    assert outside.messages[0].mail_from in ("", "<>")  # the null sender


# -- Postfix -> relay -> sink, one test per transport --------------------------------------

TRANSPORTS = ["pipe", "pipe-local", "curl", "lmtp"]


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_list_post_through_postfix_reaches_every_member(
        kind: str, postfix: PostfixInstance, make_relay: Callable[..., RelayProcess],
        shared_dir: Path, sink: SmtpSink, outside: SmtpSink,
        lazy_python: Callable[[], PythonCommand]) -> None:
    """(a) pipe, (b) curl, (c) LMTP: every member gets one copy with the list headers."""
    relay = start_both(kind, postfix, make_relay, shared_dir, outside, lazy_python)

    data = message()
    post(postfix, [LIST], data)
    assert_list_copies(sink, data, relay, postfix)
    postfix.wait_for_log(r"to=<team@lists\.test>, relay=\S+, .*status=sent")
    assert postfix.wait_for_queue() == []
    assert outside.messages == []


@pytest.mark.parametrize("kind", ["pipe", "curl", "lmtp"])
def test_relay_down_postfix_defers_then_delivers_once(
        kind: str, postfix: PostfixInstance, make_relay: Callable[..., RelayProcess],
        sink: SmtpSink, outside: SmtpSink, lazy_python: Callable[[], PythonCommand]) -> None:
    """(d) The relay is down: Postfix keeps the message; once it is up, one copy each."""
    relay = make_relay()
    use_transport(kind, postfix, relay, outside, lazy_python)
    postfix.start()

    data = message()
    post(postfix, [LIST], data)
    queue = postfix.wait_for_queue(lambda q: deferred_entry(q, LIST))
    assert deferred_entry(queue, LIST)["delay_reason"]
    postfix.wait_for_log(r"to=<team@lists\.test>, .*status=deferred")
    assert sink.messages == []

    relay.start()
    postfix.flush()
    assert_list_copies(sink, data, relay, postfix)
    assert postfix.wait_for_queue() == []
    assert outside.messages == []  # no bounce, no delay warning


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_unknown_list_is_bounced_with_the_relays_reason(
        kind: str, postfix: PostfixInstance, make_relay: Callable[..., RelayProcess],
        shared_dir: Path, sink: SmtpSink, outside: SmtpSink,
        lazy_python: Callable[[], PythonCommand]) -> None:
    """(e) Postfix bounces to the poster with the relay's 5.1.1; nothing reaches members."""
    relay = start_both(kind, postfix, make_relay, shared_dir, outside, lazy_python)

    post(postfix, ["nobody@lists.test"], make_message("nobody@lists.test"))
    line = postfix.wait_for_log(r"^.*to=<nobody@lists\.test>.*status=bounced.*$").group(0)
    assert "dsn=5.1.1" in line
    assert "no list or alias <nobody@lists.test> here" in line  # the relay's own words
    bounce = outside.wait_for_recipients(1, timeout=30)
    assert bounce == [POSTER]
    assert outside.messages[0].mail_from in ("", "<>")  # the null sender
    assert b"5.1.1" in outside.messages[0].content
    assert postfix.wait_for_queue() == []
    # The relay stored nothing, so nothing can ever reach a member.
    assert sum(relay.counts()[0].values()) == 0
    assert sink.messages == []


@pytest.mark.parametrize("kind", ["curl", "pipe"])
def test_wrong_key_defers_and_nothing_is_lost(
        kind: str, postfix: PostfixInstance, make_relay: Callable[..., RelayProcess],
        sink: SmtpSink, outside: SmtpSink, lazy_python: Callable[[], PythonCommand]) -> None:
    """(f) 401 from the relay: Postfix defers (exit 75); with the right key it arrives."""
    # Postfix retries every second; keep the failed-key limiter (tested on its own) from
    # turning the later right key into a 429 for a minute.
    relay = make_relay(MAILFLOW_HTTP_AUTH_MAX_FAILURES="1000")
    use_transport(kind, postfix, relay, outside, lazy_python, key="not-the-key")
    relay.start()
    postfix.start()

    data = message()
    post(postfix, [LIST], data)
    queue = postfix.wait_for_queue(lambda q: deferred_entry(q, LIST))
    reason = deferred_entry(queue, LIST)["delay_reason"]
    assert "401" in reason or "key" in reason.lower(), reason
    assert sink.messages == []
    assert outside.messages == []

    # Fix the key where the transport reads it: the key file, or the wrapper's env.
    if kind == "curl":
        postfix.write_file("ingress.psk", PSK + "\n")
    else:
        python = lazy_python()
        postfix.pipe_wrapper(
            "mailflow-pipe", [*python.argv, "-m", "mailflow", "pipe", "--url",
                              f"http://127.0.0.1:{relay.http_port}"],
            {**python.env, "MAILFLOW_INGRESS_PSK": PSK})
    postfix.flush()
    assert_list_copies(sink, data, relay, postfix)
    assert postfix.wait_for_queue() == []
    assert outside.messages == []


def test_policy_service_refuses_unknown_list_at_rcpt(
        postfix: PostfixInstance, make_relay: Callable[..., RelayProcess], sink: SmtpSink,
        outside: SmtpSink) -> None:
    """(g) With check_policy_service, Postfix itself refuses unknown list addresses."""
    relay = with_policy_service(postfix, make_relay, outside)

    with smtplib.SMTP("127.0.0.1", postfix.smtp_port, timeout=30) as client:
        client.ehlo("client.test")
        assert client.mail(POSTER)[0] == 250
        code, text = client.rcpt("nobody@lists.test")
        assert 500 <= code < 600, (code, text)
        assert b"5.1.1" in text
        code, text = client.rcpt(LIST)
        assert code == 250, (code, text)
        data = message()
        code, text = client.data(data)
        assert code == 250, (code, text)
    postfix.wait_for_log(r"reject: RCPT from \S+: 5\d\d 5\.1\.1 <nobody@lists\.test>")
    assert_list_copies(sink, data, relay, postfix)
    assert outside.messages == []


def test_content_filter_relay_reinjects_into_postfix(
        postfix: PostfixInstance, make_relay: Callable[..., RelayProcess], sink: SmtpSink,
        outside: SmtpSink) -> None:
    """content_filter to the relay's SMTP port; the relay's copies re-enter Postfix on a
    second smtpd without the filter, and Postfix delivers them to the members' server."""
    reinject_port = free_port()
    relay = make_relay(MAILFLOW_SMTP_RELAY=f"smtp://127.0.0.1:{reinject_port}")
    postfix.add_master_entry(CONTENT_FILTER_SERVICES.format(reinject_port=reinject_port))
    route(postfix, outside, f"smtp:[127.0.0.1]:{relay.smtp_port}",
          **{"members.test": f"smtp:[127.0.0.1]:{sink.port}"})
    postfix.main_settings({"content_filter": f"mailflow-filter:[127.0.0.1]:{relay.smtp_port}"})
    relay.start()
    postfix.start()

    data = message()
    post(postfix, [LIST], data)
    assert_list_copies(sink, data, relay, postfix)
    postfix.wait_for_log(
        rf"to=<team@lists\.test>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:{relay.smtp_port}, "
        r".*status=sent")
    for member in MEMBERS:
        postfix.wait_for_log(rf"to=<{member}>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:"
                             rf"{sink.port}, .*status=sent")
    for copy in sink.messages:
        header, _ = headers.split_message(copy.content)
        received = headers.field_values(header, "Received")
        # Postfix (reinject) -> relay -> Postfix (first smtpd): three hops, newest first.
        assert len(received) >= 3, received
        assert "MailFlow Relay" in received[1]
    assert postfix.wait_for_queue() == []
    assert outside.messages == []
