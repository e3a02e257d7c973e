"""The send chain: each step alone, and the copy it renders, byte for byte."""

from __future__ import annotations

from mailflow import headers
from mailflow.model import InboundMessage, ListKind, MailingList
from mailflow.pipeline.chain import SEND_CHAIN, render_copy, rendering_variant
from mailflow.pipeline.context import CopyContext, Identity
from mailflow.pipeline.send.list_headers import LIST_FIELDS, list_headers
from mailflow.pipeline.send.trace import trace_fields

RAW = b"From: a@x.test\r\nList-Id: <old.list>\r\nSubject: hi\r\n\r\nbody\r\n"
MESSAGE = InboundMessage("q1", "a@x.test", ("team@example.test",), "h", len(RAW),
                         1_800_000_000.0, "127.0.0.1", "client.test", "ESMTP")
TEAM = MailingList(7, "team@example.test", ListKind.LIST, "Team", 0, 0.0)
ALIAS = MailingList(8, "info@example.test", ListKind.ALIAS, "", 0, 0.0)
IDENTITY = Identity("abc", "relay.test")


def copy(mailing_list: MailingList) -> CopyContext:
    return CopyContext(MESSAGE, mailing_list, IDENTITY, headers.split_message(RAW)[0])


def test_trace_fields() -> None:
    ctx = copy(TEAM)
    trace_fields(ctx)
    assert ctx.added == [
        "Received: from client.test (127.0.0.1)\n\tby relay.test (MailFlow Relay) with ESMTP "
        "id q1\n\tfor <team@example.test>; Fri, 15 Jan 2027 08:00:00 -0000",
        "X-MailFlow-Loop: abc; team@example.test"]
    assert ctx.removed == []


def test_list_headers_for_lists_only() -> None:
    ctx = copy(TEAM)
    list_headers(ctx)
    assert ctx.added == ['List-Id: "Team" <team.example.test>',
                         "List-Post: <mailto:team@example.test>",
                         "List-Help: <mailto:team-request@example.test?subject=help>",
                         "List-Subscribe: <mailto:team-join@example.test>",
                         "List-Unsubscribe: <mailto:team-leave@example.test>",
                         "Precedence: list"]
    assert ctx.removed == list(LIST_FIELDS)
    ctx = copy(ALIAS)
    list_headers(ctx)
    assert (ctx.added, ctx.removed) == ([], [])


def test_the_copy_is_the_fields_then_the_original_bytes() -> None:
    rendered = render_copy(RAW, MESSAGE, TEAM, IDENTITY)
    assert rendered.endswith(b"From: a@x.test\r\nSubject: hi\r\n\r\nbody\r\n")
    assert rendered.startswith(b"Received: from client.test (127.0.0.1)\r\n\tby relay.test")
    assert b"X-MailFlow-Loop: abc; team@example.test\r\nList-Id: \"Team\"" in rendered
    assert render_copy(RAW, MESSAGE, ALIAS, IDENTITY).endswith(RAW)
    assert render_copy(RAW, MESSAGE, TEAM, IDENTITY, steps=()) == RAW
    bare = RAW.replace(b"\r\n", b"\n")
    assert b"\r" not in render_copy(bare, MESSAGE, TEAM, IDENTITY)


def test_steps_apply_in_registry_order() -> None:
    def footer_marker(ctx: CopyContext) -> None:
        ctx.added.append("X-Test: last")

    rendered = render_copy(RAW, MESSAGE, ALIAS, IDENTITY, steps=(*SEND_CHAIN, footer_marker))
    header, _ = headers.split_message(rendered)
    names = [name for _, name in headers.iter_fields(header)]
    assert names[:3] == [b"received", b"x-mailflow-loop", b"x-test"]


def test_the_rendering_variant_is_the_list() -> None:
    assert rendering_variant(TEAM) != rendering_variant(ALIAS)
    assert rendering_variant(TEAM) == rendering_variant(TEAM)


def test_client_and_user_chosen_values_cannot_start_a_field() -> None:
    """A HELO name with a bare CR, a list name stored with a line break: no new field."""
    message = InboundMessage("q1", "a@x.test", ("team@example.test",), "h", len(RAW),
                             1_800_000_000.0, "127.0.0.1", "evil\rX-Injected: yes", "ESMTP")
    team = MailingList(7, "team@example.test", ListKind.LIST, "Team\r\nBcc: x@y.test", 0, 0.0)
    rendered = render_copy(RAW, message, team, IDENTITY)
    header, _ = headers.split_message(rendered)
    assert b"Received: from evil?X-Injected: yes (127.0.0.1)\r\n" in header
    assert b'List-Id: "Team??Bcc: x@y.test" <team.example.test>\r\n' in header
    assert header.replace(b"\r\n", b"").count(b"\r") == 0 and b"\n\r" not in header
    assert headers.header_safe("caf\u00e9 \U0001f469\u200d\U0001f4bb") == \
        "caf\u00e9 \U0001f469\u200d\U0001f4bb"  # printable Unicode stays as it is
    assert headers.header_safe("\udcff\x00") == "??"
