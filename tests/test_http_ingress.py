"""POST /v1/email, ``mailflow pipe`` and the Postfix policy service, over real sockets."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable
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


def start_relay(make: Callable[..., RelayProcess]) -> RelayProcess:
    running = make(ingress_psk=f"{KEY},{OLD_KEY}", max_message_size="4096",
                   http_auth_max_failures="3", poll_interval="0.2", policy=True).start()
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
         content_type: str = "message/rfc822") -> httpx.Response:
    headers = {"Content-Type": content_type}
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
    assert post(relay, make_message("team@example.test"), key=None).status_code == 401
    wrong = post(relay, make_message("team@example.test"), key="guess")
    assert wrong.status_code == 401
    assert wrong.headers["content-type"] == "application/problem+json"
    assert post(relay, make_message("team@example.test"), key="guess2").status_code == 401
    limited = post(relay, make_message("team@example.test"), key=KEY)
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 0
    assert sum(relay.counts()[0].values()) == 0


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
