"""POST /v1/email, ``mailflow pipe`` and the Postfix policy service, over real sockets."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from mailflow.testing.factories import make_list, make_message
from mailflow.testing.forks import run_mailflow
from mailflow.testing.ports import free_port
from mailflow.testing.relay import RelayProcess
from mailflow.testing.sink import SmtpSink

KEY = "s3cret-key"
OLD_KEY = "previous-key"
CURL_SCRIPT = Path(__file__).parents[1] / "contrib" / "postfix" / "mailflow-curl.sh"


MAX_CONNECTIONS = 4


def start_relay(make: Callable[..., RelayProcess]) -> RelayProcess:
    running = make(ingress_psk=f"{KEY},{OLD_KEY}", max_message_size="4096",
                   http_auth_max_failures="3", poll_interval="0.2", policy=True,
                   http_max_connections=str(MAX_CONNECTIONS)).start()
    with running.repository() as repo:
        make_list(repo, "team@example.test", ["ann@members.test", "ben@members.test"])
    return running


@pytest.fixture
def relay(make_relay: Callable[..., RelayProcess]) -> RelayProcess:
    return start_relay(make_relay)


@pytest.fixture(scope="module")
def shared(make_module_relay: Callable[..., RelayProcess]) -> RelayProcess:
    """The same relay, shared by the tests that use the right key (no limiter state)
    and post, if at all, to a list of their own (:meth:`RelayProcess.fresh_list`),
    looking only at its members' copies: none can see another's mail."""
    return start_relay(make_module_relay)


@pytest.fixture(scope="module")
def refusing(make_module_relay: Callable[..., RelayProcess]) -> RelayProcess:
    """The same relay again, for the tests that only get refusals or only read: with
    nothing ever stored in it, "nothing stored" is exact (counts are all zero)."""
    return start_relay(make_module_relay)


def to(address: str) -> list[tuple[str, str]]:
    return [("from", "poster@outside.test"), ("to", address)]


def post(relay: RelayProcess, data: bytes, *, key: str | None = KEY,
         params: list[tuple[str, str]] | None = None,
         content_type: str = "message/rfc822", forwarded_for: str | None = None
         ) -> httpx.Response:
    headers = {"Content-Type": content_type}
    if forwarded_for is not None:
        headers["X-Forwarded-For"] = forwarded_for
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    query = params if params is not None else [("from", "poster@outside.test"),
                                                 ("to", "team@example.test")]
    return httpx.post(f"http://127.0.0.1:{relay.http_port}/v1/email", params=query,
                      content=data, headers=headers, timeout=30)


def test_accepted_message_is_relayed(shared: RelayProcess, module_sink: SmtpSink) -> None:
    address, members = shared.fresh_list(members=2)
    response = post(shared, make_message(address), params=to(address))
    assert response.status_code == 202
    assert response.json()["message_id"]
    [copy] = module_sink.wait_for_copies(members)
    assert sorted(copy.rcpt_tos) == members
    # A key from the rotation list works too.
    assert post(shared, make_message(address), params=to(address),
                key=OLD_KEY).status_code == 202
    assert len(module_sink.wait_for_copies(members, count=4)) == 2


def test_recipient_from_delivery_headers_when_no_to(shared: RelayProcess,
                                                    module_sink: SmtpSink) -> None:
    address, members = shared.fresh_list(members=2)
    data = f"X-Original-To: {address}\r\n".encode() + make_message(address)
    response = post(shared, data, params=[("from", "poster@outside.test")])
    assert response.status_code == 202
    [copy] = module_sink.wait_for_copies(members)
    assert sorted(copy.rcpt_tos) == members


@pytest.mark.parametrize(("data", "params", "status", "enhanced"), [
    (b"", None, 400, "5.6.0"),
    (b"\x00\x01 binary garbage without headers\r\n", None, 400, "5.6.0"),
    (make_message("x@example.test"), [("from", "p@outside.test")], 400, "5.5.1"),
    (make_message("team@example.test", body=b"y" * 70 + b"\r\n") * 70, None, 413, "5.3.4"),
    (make_message("nobody@example.test"), [("to", "nobody@example.test")], 422, "5.1.1"),
    (make_message("a@elsewhere.test"), [("to", "a@elsewhere.test")], 422, "5.7.1"),
])
def test_refusals_are_problem_json(refusing: RelayProcess, data: bytes,
                                   params: list[tuple[str, str]] | None, status: int,
                                   enhanced: str) -> None:
    response = post(refusing, data, params=params)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status and problem["enhanced_status"] == enhanced
    assert problem["detail"]
    # The shape clients rely on, whichever table row answered.
    assert set(problem) == {"type", "title", "status", "detail", "smtp_code", "enhanced_status"}
    assert problem["title"] == {400: "Bad message", 413: "Message too large",
                                422: "Refused"}[status]
    assert str(problem["smtp_code"])[0] == "5"
    assert sum(refusing.counts()[0].values()) == 0  # nothing stored


def test_loop_is_refused_with_422(shared: RelayProcess, module_sink: SmtpSink) -> None:
    address, members = shared.fresh_list(members=2)
    assert post(shared, make_message(address), params=to(address)).status_code == 202
    [copy] = module_sink.wait_for_copies(members)
    response = post(shared, copy.content, params=to(address))
    assert (response.status_code, response.json()["enhanced_status"]) == (422, "5.4.6")


def test_bad_keys_get_401_then_429(relay: RelayProcess) -> None:
    # No proxy is trusted by default (uvicorn's own default trusts 127.0.0.1): a client
    # naming another address in X-Forwarded-For is still counted as itself.
    message = make_message("team@example.test")
    assert post(relay, message, key=None, forwarded_for="192.0.2.1").status_code == 401
    wrong = post(relay, message, key="guess", forwarded_for="192.0.2.2")
    assert wrong.status_code == 401
    assert wrong.headers["content-type"] == "application/problem+json"
    assert post(relay, message, key="guess2").status_code == 401
    for fake in (None, "192.0.2.3", "203.0.113.7, 198.51.100.1"):
        limited = post(relay, message, key=KEY, forwarded_for=fake)
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 0
    assert "from 127.0.0.1: bad or missing key" in relay.log()
    assert "192.0.2." not in relay.log()
    assert sum(relay.counts()[0].values()) == 0


def test_connections_beyond_the_limit_get_503_and_are_closed(refusing: RelayProcess
                                                              ) -> None:
    """Idle connections (no request yet) count: a client cannot hold the listener with
    them, nor exhaust the relay's file descriptors, beyond ``http_max_connections``."""
    address = ("127.0.0.1", refusing.http_port)
    idle = [socket.create_connection(address, timeout=10) for _ in range(MAX_CONNECTIONS)]
    try:
        with socket.create_connection(address, timeout=10) as extra:
            answer = read_until_closed(extra, time.monotonic() + 5)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 "), answer
        assert b"content-type: application/problem+json" in head.lower()
        assert json.loads(body)["status"] == 503
    finally:
        for conn in idle:
            conn.close()
    # Once they are gone, requests are served again (the server notices the closes).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.create_connection(address, timeout=10) as conn:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
            if read_until_closed(conn, time.monotonic() + 5).startswith(b"HTTP/1.1 200 "):
                break
        time.sleep(0.05)
    else:
        pytest.fail("the relay did not serve again after the idle connections closed")


def test_wrong_media_type_is_415(refusing: RelayProcess) -> None:
    response = post(refusing, b'{"subject": "hi"}', content_type="application/json")
    assert response.status_code == 415
    assert sum(refusing.counts()[0].values()) == 0


def test_storage_failure_is_503_with_retry_after(make_relay: Callable[..., RelayProcess]
                                                  ) -> None:
    # Every body a file (max_body_in_database=0): a broken blob store fails the ingest.
    relay = make_relay(ingress_psk=KEY, max_body_in_database="0").start()
    with relay.repository() as repo:
        make_list(repo, "team@example.test", ["ann@members.test"])
    blob_dir = relay.data_dir / "blobs"
    moved = blob_dir.with_name("blobs.moved")
    blob_dir.rename(moved)
    blob_dir.write_text("not a directory")
    try:
        response = post(relay, make_message("team@example.test"))
        assert response.status_code == 503
        assert response.headers["retry-after"] == "60"
        problem = response.json()
        assert (problem["title"], problem["smtp_code"], problem["enhanced_status"]) == (
            "Try again later", 451, "4.3.0")
    finally:
        blob_dir.unlink()
        moved.rename(blob_dir)


def pipe(relay: RelayProcess, data: bytes, *args: str,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return run_mailflow(["pipe", *args], {**relay.env, **(env or {})}, input=data)


@pytest.mark.parametrize("remote", [False, True], ids=["store", "url"])
def test_pipe_exit_codes(shared: RelayProcess, module_sink: SmtpSink, remote: bool) -> None:
    relay = shared
    url = ["--url", f"http://127.0.0.1:{relay.http_port}"] if remote else []
    address, members = relay.fresh_list(members=2)
    ok = pipe(relay, make_message(address), "--from", "p@outside.test", "--to", address, *url)
    assert ok.returncode == 0, ok.stderr
    [copy] = module_sink.wait_for_copies(members)
    assert sorted(copy.rcpt_tos) == members

    unknown = pipe(relay, make_message("x@example.test"), "--from", "p@outside.test",
                   "--to", "nobody@example.test", *url)
    assert unknown.returncode == 67 and b"5.1.1" in unknown.stderr
    malformed = pipe(relay, b"", "--to", "team@example.test", *url)
    assert malformed.returncode == 65
    usage = pipe(relay, b"x", "--bogus-option", *url)
    assert usage.returncode == 75 and usage.stderr.startswith(b"4.")


def test_pipe_temporary_failures_exit_75(relay: RelayProcess, tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    down = pipe(relay, make_message("team@example.test"), "--to", "team@example.test",
                "--url", closed)
    assert down.returncode == 75 and down.stderr.startswith(b"4.4.1")
    bad_key = pipe(relay, make_message("team@example.test"), "--to", "team@example.test",
                   "--url", f"http://127.0.0.1:{relay.http_port}",
                   env={"MAILFLOW_INGRESS_PSK": "wrong"})
    assert bad_key.returncode == 75 and bad_key.stderr.startswith(b"4.7.0")
    no_store = pipe(relay, make_message("team@example.test"), "--to", "team@example.test",
                    env={"MAILFLOW_DATA_DIR": str(tmp_path / "none"),
                         "MAILFLOW_DATABASE_URL": ""})
    assert no_store.returncode == 75 and b"mailflow init" in no_store.stderr


def curl(relay: RelayProcess, data: bytes, *rcpts: str,
         key: str = KEY) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["sh", str(CURL_SCRIPT), f"http://127.0.0.1:{relay.http_port}",
                           "poster@outside.test", *rcpts], input=data,
                          env={"PATH": "/usr/bin:/bin", "MAILFLOW_INGRESS_PSK": key},
                          capture_output=True, timeout=60)


def test_curl_script_exit_codes(relay: RelayProcess, sink: SmtpSink) -> None:
    assert curl(relay, make_message("team@example.test"), "team@example.test").returncode == 0
    assert len(sink.wait_for_recipients(2)) == 2
    unknown = curl(relay, make_message("x@example.test"), "nobody@example.test")
    assert unknown.returncode == 67 and b"5.1.1" in unknown.stderr
    assert curl(relay, b"", "team@example.test").returncode == 65
    wrong = curl(relay, make_message("team@example.test"), "team@example.test", key="nope")
    assert wrong.returncode == 75


def policy_request(port: int, **attributes: str) -> str:
    request = {"request": "smtpd_access_policy", "protocol_state": "RCPT",
               "sender": "poster@outside.test", **attributes}
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        payload = "".join(f"{k}={v}\n" for k, v in request.items()) + "\n"
        conn.sendall(payload.encode() * 2)  # two requests on one connection
        answers = b""
        while answers.count(b"\n\n") < 2:
            chunk = conn.recv(4096)
            if not chunk:
                break
            answers += chunk
    first, second, _ = answers.decode().split("\n\n")
    assert first == second
    return first


def test_policy_service_answers_at_rcpt_time(refusing: RelayProcess) -> None:
    port = refusing.policy_port
    assert port is not None
    assert policy_request(port, recipient="team@example.test") == "action=DUNNO"
    assert policy_request(port, recipient="team-bounces@example.test") == "action=DUNNO"
    assert policy_request(port, recipient="nobody@example.test").startswith(
        "action=REJECT 5.1.1")
    # Other domains of the same mail server are none of the relay's business.
    assert policy_request(port, recipient="user@mailbox.test") == "action=DUNNO"


def test_delivery_header_fallback_takes_the_topmost_and_mbox_from_is_dropped(
        shared: RelayProcess, module_sink: SmtpSink) -> None:
    address, members = shared.fresh_list(members=2)
    data = (b"From poster@outside.test Mon Nov 23 10:00:00 2026\r\n"
            + f"Delivered-To: {address}\r\nDelivered-To: someone@elsewhere.test\r\n".encode()
            + make_message(address))
    response = post(shared, data, params=[("from", "poster@outside.test")])
    assert response.status_code == 202, response.text
    [copy] = module_sink.wait_for_copies(members)
    assert b"From poster@outside.test Mon" not in copy.content


def test_pipe_psk_file_takes_the_first_key_of_a_rotation_list(shared: RelayProcess,
                                                              module_sink: SmtpSink,
                                                              tmp_path: Path) -> None:
    address, members = shared.fresh_list(members=2)
    key_file = tmp_path / "psk"
    key_file.write_text(f"{KEY},{OLD_KEY}\n")
    result = pipe(shared, make_message(address), "--from", "p@outside.test",
                  "--to", address, "--url", f"http://127.0.0.1:{shared.http_port}",
                  "--psk-file", str(key_file), env={"MAILFLOW_INGRESS_PSK": ""})
    assert result.returncode == 0, result.stderr
    [copy] = module_sink.wait_for_copies(members)
    assert sorted(copy.rcpt_tos) == members


REQUEST_TIMEOUT = 0.5


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    """A relay behind a proxy at 127.0.0.1, with a tiny body timeout and 2 failed keys
    allowed; on SQLite only (no store is involved), and nothing is ever stored in it."""
    relay = RelayProcess(tmp_path_factory.mktemp("proxied"), settings={
        "MAILFLOW_INGRESS_PSK": KEY, "MAILFLOW_HTTP_AUTH_MAX_FAILURES": "2",
        "MAILFLOW_HTTP_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT),
        "MAILFLOW_FORWARDED_ALLOW_IPS": "127.0.0.1", "MAILFLOW_LISTENER_PROCESS": "false"})
    relay.init()
    try:
        yield relay.start()
    finally:
        relay.stop()


def test_behind_a_trusted_proxy_the_forwarded_address_is_counted(proxied: RelayProcess
                                                                 ) -> None:
    message = make_message("nobody@example.test")
    params = to("nobody@example.test")
    for _ in range(2):
        assert post(proxied, message, key="guess", params=params,
                    forwarded_for="203.0.113.5").status_code == 401
    assert post(proxied, message, params=params,
                forwarded_for="203.0.113.5").status_code == 429
    # Neither another client of the proxy nor the proxy itself is blocked: past the
    # limiter and the key, refused for its unknown recipient.
    assert post(proxied, message, params=params,
                forwarded_for="203.0.113.6").status_code == 422
    assert post(proxied, message, params=params).status_code == 422
    assert "refused /v1/email from 203.0.113.5: bad or missing key" in proxied.log()
    # IPv6 clients are counted per /64.
    for host in ("2001:db8::1", "2001:db8::2"):
        assert post(proxied, message, key="guess", params=params,
                    forwarded_for=host).status_code == 401
    assert post(proxied, message, params=params,
                forwarded_for="2001:db8::ffff:3").status_code == 429
    assert post(proxied, message, params=params,
                forwarded_for="2001:db8:0:1::1").status_code == 422
    assert sum(proxied.counts()[0].values()) == 0


def request_head(key: str = KEY) -> bytes:
    return (f"POST /v1/email?from=p%40outside.test&to=nobody%40example.test HTTP/1.1\r\n"
            f"Host: relay.test\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: message/rfc822\r\n").encode()


def read_until_closed(conn: socket.socket, deadline: float) -> bytes:
    """Everything the relay sends until it closes the connection (by ``deadline``)."""
    received = b""
    while time.monotonic() < deadline:
        conn.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = conn.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"connection still open; received {received!r}")


ENDLESS_START = b"Transfer-Encoding: chunked\r\n\r\nd\r\nSubject: hi\r\n\r\n"


def test_a_body_that_never_ends_gets_408(proxied: RelayProcess) -> None:
    with socket.create_connection(("127.0.0.1", proxied.http_port), timeout=10) as conn:
        conn.sendall(request_head() + ENDLESS_START)  # one chunk, then nothing more
        sent = time.monotonic()
        answer = read_until_closed(conn, sent + REQUEST_TIMEOUT + 5)
        elapsed = time.monotonic() - sent
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer
    assert b"content-type: application/problem+json" in head.lower()
    problem = json.loads(body)
    assert (problem["status"], problem["smtp_code"], problem["enhanced_status"]) == (
        408, 421, "4.4.2")
    assert REQUEST_TIMEOUT * 0.9 <= elapsed < REQUEST_TIMEOUT + 5
    assert sum(proxied.counts()[0].values()) == 0


def test_a_request_head_that_never_ends_is_cut(proxied: RelayProcess) -> None:
    with socket.create_connection(("127.0.0.1", proxied.http_port), timeout=10) as conn:
        conn.sendall(b"POST /v1/email HTTP/1.1\r\nHost: rel")
        sent = time.monotonic()
        assert read_until_closed(conn, sent + REQUEST_TIMEOUT + 5) == b""
        assert time.monotonic() - sent >= REQUEST_TIMEOUT * 0.9
    # Requests in turn on one kept-alive connection each get the time again.
    with httpx.Client(base_url=f"http://127.0.0.1:{proxied.http_port}", timeout=10) as client:
        for _ in range(3):
            assert client.get("/healthz").is_success


def test_an_unread_body_closes_the_connection(proxied: RelayProcess) -> None:
    """A refusal before the body (here a wrong key) closes the connection: uvicorn would
    otherwise read on, and a body trickling in would keep it open for ever."""
    with socket.create_connection(("127.0.0.1", proxied.http_port), timeout=10) as conn:
        # From a client of the proxy of its own, so the failure blocks no other test.
        conn.sendall(request_head("wrong") + b"X-Forwarded-For: 198.51.100.9\r\n"
                     + ENDLESS_START)
        # Well before uvicorn's own 5 s keep-alive timeout would close it.
        answer = read_until_closed(conn, time.monotonic() + 3)
    assert answer.startswith(b"HTTP/1.1 401 "), answer
    assert b"\r\nconnection: close\r\n" in answer.lower()


def test_a_client_going_away_mid_body_is_one_info_line(proxied: RelayProcess) -> None:
    logged = len(proxied.log())
    with socket.create_connection(("127.0.0.1", proxied.http_port), timeout=10) as conn:
        conn.sendall(request_head() + b"Content-Length: 1000\r\n\r\nSubject: hi\r\n")
    deadline = time.monotonic() + 10
    while "went away" not in proxied.log()[logged:] and time.monotonic() < deadline:
        time.sleep(0.02)
    # One more request: whatever the relay logs for the first is written by now.
    assert httpx.get(f"http://127.0.0.1:{proxied.http_port}/healthz", timeout=10).is_success
    new = proxied.log()[logged:]
    [line] = [line for line in new.splitlines() if "went away" in line]
    assert " INFO mailflow.ingress.http: POST /v1/email from 127.0.0.1: " in line
    assert "Traceback" not in new and " ERROR " not in new, new
    assert sum(proxied.counts()[0].values()) == 0
