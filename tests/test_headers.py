"""Byte-exact header handling, loop checks, decoration and the retry schedule."""

from __future__ import annotations

import pytest

from mailflow import headers
from mailflow.backoff import RetryPolicy
from mailflow.errors import LoopDetected
from mailflow.model import InboundMessage, ListKind, MailingList
from mailflow.pipeline.accept.hops import check_hops
from mailflow.pipeline.accept.loops import check_not_looping
from mailflow.pipeline.chain import render_copy
from mailflow.pipeline.context import Identity
from mailflow.pipeline.marker import loop_marker

RAW = (b"From: a@x.test\r\nList-Id: <old.list>\r\nX-Long: one\r\n two\r\n"
       b"Subject: hi\r\n\r\nbody line\r\n\r\nmore\r\n")


def test_split_and_fields_keep_bytes() -> None:
    header, body = headers.split_message(RAW)
    assert header + body == RAW
    assert body == b"\r\nbody line\r\n\r\nmore\r\n"
    assert headers.field_values(header, "x-long") == ["one two"]
    assert headers.count_fields(header, "LIST-ID") == 1
    assert headers.without_fields(header, ["List-Id"]) == (
        b"From: a@x.test\r\nX-Long: one\r\n two\r\nSubject: hi\r\n")
    assert headers.split_message(b"no body at all") == (b"no body at all", b"")


def test_loop_checks() -> None:
    header = b"".join(b"Received: hop\r\n" for _ in range(30))
    check_hops(header, 30)
    with pytest.raises(LoopDetected):
        check_hops(header + b"Received: one more\r\n", 30)
    marked = f"X-MailFlow-Loop: {loop_marker('abc', 'team@example.test')}\r\n".encode()
    check_not_looping(marked, "abc", ["other@example.test"])
    check_not_looping(marked, "another-instance", ["team@example.test"])
    with pytest.raises(LoopDetected):
        check_not_looping(marked, "abc", ["team@example.test"])


@pytest.mark.parametrize("kind", list(ListKind))
def test_outbound_copy_prepends_fields_and_keeps_the_body(kind: ListKind) -> None:
    message = InboundMessage("q1", "a@x.test", ("team@example.test",), "h", len(RAW),
                             1_800_000_000.0, "127.0.0.1", "client.test", "ESMTP")
    mailing_list = MailingList(1, "team@example.test", kind, "Täm", 0, 0.0)
    copy = render_copy(RAW, message, mailing_list, Identity("abc", "relay.test"))
    header, body = headers.split_message(copy)
    assert body == headers.split_message(RAW)[1]
    assert headers.field_values(header, "X-MailFlow-Loop") == ["abc; team@example.test"]
    if kind is ListKind.LIST:
        assert headers.field_values(header, "List-Id") == [
            "=?utf-8?q?T=C3=A4m?= <team.example.test>"]
    else:
        assert headers.field_values(header, "List-Id") == ["<old.list>"]
    assert all(line.endswith(b"\r\n") for line in header.splitlines(keepends=True))


def test_retry_schedule_is_exponential_capped_and_ages_out() -> None:
    policy = RetryPolicy(initial_delay=60, multiplier=2, max_delay=600, max_age=3600)
    assert [policy.delay(n) for n in range(1, 7)] == [60, 120, 240, 480, 600, 600]
    assert not policy.expired(0, 3599)
    assert policy.expired(0, 3600)


def test_message_id_is_unfolded_made_safe_and_bounded() -> None:
    from mailflow.headers import MESSAGE_ID_LIMIT, message_id

    def of(header: bytes) -> str:
        return message_id(header, header.lower())

    assert of(b"Message-ID: <a@b>\r\nSubject: x\r\n") == "<a@b>"
    assert of(b"Subject: x\r\nMESSAGE-id:\r\n  <folded@b>\r\nTo: y\r\n") == "<folded@b>"
    assert of(b"Subject: x\r\nX-Message-ID: <not@this>\r\n") == ""
    assert of(b"Message-ID: <a\x1b[31m@b>\r\n") == "<a?[31m@b>"
    assert len(of(b"Message-ID: <" + b"x" * 1000 + b">\r\n")) == MESSAGE_ID_LIMIT
