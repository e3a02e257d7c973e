"""The relay <-> child messages, their framing, what the child keeps, and where sessions run."""

from __future__ import annotations

import asyncio
import marshal
import os
import pickle
import random
import smtplib
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mailflow.child.channel import Channel, ProtocolError, dumps, loads
from mailflow.child.contents import ChildContents
from mailflow.child.messages import (
    Accept,
    AcceptEach,
    Accepted,
    AcceptedEach,
    CheckRecipient,
    ChildConfig,
    Close,
    CloseListeners,
    Failure,
    Forget,
    ListenersClosed,
    ListenerSpec,
    ListenSocket,
    Ready,
    RecipientChecked,
    RecipientVerdict,
    Refused,
    ReloadTls,
    Replies,
    Send,
    SmtpEgressSpec,
    StartFailed,
    TlsReloaded,
    TlsSpec,
    Unavailable,
)
from mailflow.errors import (
    EgressUnavailable,
    LoopDetected,
    MessageTooLarge,
    StorageUnavailable,
    TemporaryFailure,
    UnknownRecipient,
    error_key,
)
from mailflow.ingress.limits import SessionLimits
from mailflow.model import Delivery, Envelope, RecipientReply, Verdict
from mailflow.smtp_relay import parse_smtp_relay
from mailflow.testing.factories import make_list, make_message
from mailflow.testing.ports import descendants, socket_inodes
from mailflow.testing.relay import RelayProcess

ENVELOPE = Envelope("a@x.test", ("team@example.test", "b@example.test"), "127.0.0.1", "h",
                    "ESMTP")

EVERY_MESSAGE = [
    ChildConfig({"smtp": SmtpEgressSpec(parse_smtp_relay("smtp://u:p@127.0.0.1:2525"), 8, 60.0,
                                        10.0, "relay.test")},
                ListenerSpec((ListenSocket(5, False), ListenSocket(6, True)), "relay.test",
                             1024, 2.0, SessionLimits(10, 2, 0.5, 1.5, 30, 3)), "DEBUG"),
    ChildConfig({}, None),
    ChildConfig({}, ListenerSpec((ListenSocket(5, False),), "relay.test", 1024, 2.0,
                                 SessionLimits(10, 2, 0.5, 1.5, 30, 3),
                                 TlsSpec("/etc/mailflow/cert.pem", "/etc/mailflow/key.pem",
                                         True))),
    Send(1, "smtp", 7, b"content", "l-bounces@x.test", ("a@x.test", "b@x.test")),
    Send(2, "smtp", 7, None, "l-bounces@x.test", ("a@x.test",)),
    Forget((1, 2, 3)),
    RecipientChecked(3, True),
    RecipientChecked(3, True, any_sender=False),
    Accepted(4, "0123456789abcdef"),
    AcceptedEach(5, (RecipientVerdict("a@x.test", "q1", None),
                     RecipientVerdict("b@x.test", None, Failure("unknown_recipient", "no")))),
    Refused(6, Failure("loop_detected", "loop")),
    CloseListeners(2.5),
    Close(),
    Ready(1234),
    StartFailed("no"),
    Replies(7, (RecipientReply("a@x.test", 250, "2.0.0 ok"),
                RecipientReply("b@x.test", 550, "5.1.1 unknown"))),
    Unavailable(8, "next hop down"),
    CheckRecipient(9, "team@example.test"),
    CheckRecipient(9, "team@example.test", "poster@outside.test"),
    Accept(10, ENVELOPE, b"raw\r\n"),
    AcceptEach(11, ENVELOPE, b"raw\r\n"),
    ListenersClosed(),
    ReloadTls(12),
    TlsReloaded(12, "AB:CD", None),
    TlsReloaded(13, None, "cannot load the TLS certificate"),
]


@pytest.mark.parametrize("message", EVERY_MESSAGE, ids=lambda m: type(m).__name__)
def test_every_message_crosses_the_framing_unchanged(message: object) -> None:
    assert loads(dumps([message])) == [message]


def test_a_frame_builds_nothing_but_a_message() -> None:
    for foreign in (pickle.dumps(Delivery(1, "m", 1, "a@x.test", 0, 0.0)),
                    pickle.dumps(StorageUnavailable("pickled exception")),
                    marshal.dumps([(999, ())]),                # no such tag
                    marshal.dumps([(1, ("too", "few"))]),      # not Send's fields
                    marshal.dumps("just a string"),
                    marshal.dumps([(0, compile("1", "x", "eval"))]),
                    b""):
        with pytest.raises(ProtocolError):
            loads(foreign)


@pytest.mark.parametrize("error", [UnknownRecipient("no list here"), LoopDetected(),
                                   MessageTooLarge("too big"), StorageUnavailable(),
                                   EgressUnavailable("down")])
def test_errors_travel_as_key_and_reason_and_are_rebuilt(error: Exception) -> None:
    assert isinstance(error, UnknownRecipient | LoopDetected | MessageTooLarge
                      | StorageUnavailable | EgressUnavailable)
    [refused] = loads(dumps([Refused(1, Failure.of(error))]))
    failure = refused.failure
    assert failure.key == error_key(error)  # the error table's stable key, not a class name
    rebuilt = failure.error()
    assert type(rebuilt) is type(error) and rebuilt.smtp_reply() == error.smtp_reply()


def test_an_unknown_error_key_is_a_temporary_failure() -> None:
    rebuilt = Failure("no_such_error", "what").error()
    assert isinstance(rebuilt, TemporaryFailure)
    assert rebuilt.smtp_reply() == "451 4.3.0 what"


def test_lmtp_verdicts_round_trip() -> None:
    verdicts = [Verdict("a@x.test", None, "q1"), Verdict("b@x.test", UnknownRecipient("no"))]
    [answer] = loads(dumps([AcceptedEach(1, tuple(map(RecipientVerdict.of, verdicts)))]))
    back = [v.verdict() for v in answer.verdicts]
    assert [(v.recipient, v.message_id) for v in back] == [("a@x.test", "q1"),
                                                           ("b@x.test", None)]
    assert back[0].error is None
    assert back[1].error is not None and back[1].error.smtp_reply() == "550 5.1.1 no"


async def test_the_channel_delivers_frames_split_and_batched_over_a_socket() -> None:
    loop = asyncio.get_running_loop()
    left_sock, right_sock = socket.socketpair()
    received: list[object] = []
    all_in = asyncio.Event()

    def on_message(message: object) -> None:
        received.append(message)
        if len(received) == len(EVERY_MESSAGE) + 2:
            all_in.set()

    left: Channel[object, object] = Channel(lambda m: None, lambda exc: None)
    right: Channel[object, object] = Channel(on_message, lambda exc: None)
    await loop.create_unix_connection(lambda: left, sock=left_sock)
    await loop.create_unix_connection(lambda: right, sock=right_sock)
    # Contents travel as attachments after the frame's values: two in one frame here.
    big = Send(99, "smtp", 0, os.urandom(300_000), "a@x.test", ("b@x.test",))
    raw = Accept(98, ENVELOPE, os.urandom(200_000))
    for message in [*EVERY_MESSAGE, big, raw]:  # one loop turn: one frame
        left.send(message)
    await asyncio.wait_for(all_in.wait(), 10)
    assert received == [*EVERY_MESSAGE, big, raw]
    left.close()
    right.close()


class _Written:
    """A transport that keeps what is written (the frames a channel sends)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return False


async def test_frames_with_contents_arrive_whatever_the_reads_they_come_in() -> None:
    sender: Channel[object, object] = Channel(lambda m: None, lambda exc: None)
    written = _Written()
    sender.transport = written  # type: ignore[assignment]
    turns = [[Send(1, "smtp", 0, b"a" * 70_000, "a@x.test", ("b@x.test",)),
              Accept(2, ENVELOPE, b"b" * 100_000), Forget((1, 2))],
             [Replies(3, ())],
             [Accept(4, ENVELOPE, b"c" * 65_536), Send(5, "smtp", 0, b"d" * 10, "a@x.test",
                                                       ("b@x.test",))]]
    for turn in turns:
        for message in turn:
            sender.send(message)
        await asyncio.sleep(0)  # one flush, one frame, per turn
    frames = bytes(written.data)
    rng = random.Random(9)
    for _ in range(20):
        received: list[object] = []
        receiver: Channel[object, object] = Channel(received.append, lambda exc: None)
        at = 0
        while at < len(frames):
            step = rng.choice([1, 7, 16, 1000, 65_536, 200_000])
            receiver.data_received(frames[at:at + step])
            at += step
        assert received == [m for turn in turns for m in turn]


def test_a_frame_whose_attachments_do_not_fill_it_is_refused() -> None:
    received: list[object] = []
    send = (1, (7, "smtp", 0, None, "a@x.test", ("b@x.test",)))  # Send, content attached
    dumped = marshal.dumps(([send], [(0, 3, 10)]))
    for attached in (b"", b"x" * 9, b"x" * 11):
        broken: Channel[object, object] = Channel(received.append, lambda exc: None)
        with pytest.raises(ProtocolError):
            broken.data_received(struct.pack("!QQ", len(dumped) + len(attached),
                                             len(dumped)) + dumped + attached)
    channel: Channel[object, object] = Channel(received.append, lambda exc: None)
    channel.data_received(struct.pack("!QQ", len(dumped) + 10, len(dumped)) + dumped
                          + b"x" * 10)
    assert received == [Send(7, "smtp", 0, b"x" * 10, "a@x.test", ("b@x.test",))]


def test_contents_are_kept_from_their_second_send_and_bounded_in_bytes() -> None:
    contents = ChildContents(budget=1000, max_item=400)
    a, b, c = b"a" * 400, b"b" * 400, b"c" * 400
    assert contents.place(a) == (0, True, [])          # once: sent, not kept
    key_a, sent, forget = contents.place(a)             # twice: kept from now on
    assert key_a > 0 and sent and forget == []
    assert contents.place(a) == (key_a, False, [])      # then by number only
    contents.place(b)
    key_b, _, _ = contents.place(b)
    assert contents.kept_bytes == 800
    contents.place(a)                                   # a is the most recent now
    contents.place(c)
    _, sent, forget = contents.place(c)                 # over the budget: b goes
    assert sent and forget == [key_b] and contents.kept_bytes == 800
    huge = b"h" * 401                                   # above the item bound:
    for _ in range(3):                                  # never kept, sent every time
        assert contents.place(huge) == (0, True, [])
    assert contents.kept_bytes == 800
    contents.clear()                                    # a new child keeps nothing
    assert contents.kept_bytes == 0
    assert contents.place(a)[1]


def test_a_new_content_at_a_freed_ones_address_is_not_taken_for_it() -> None:
    """Personalized copies: one per member, each sent once, all of one length; the next
    is often made where the last one was freed.  None of them is kept."""
    contents = ChildContents(budget=10_000, max_item=1000)
    for member in range(50):
        copy = f"footer for member {member:04d}".encode() * 10
        assert contents.place(copy) == (0, True, [])
        del copy  # its address is free for the next one
    assert contents.kept_bytes == 0


def test_the_child_keeps_no_content_above_a_quarter_of_its_budget() -> None:
    contents = ChildContents(budget=1000)
    assert contents.max_item == 250
    big, small = b"b" * 251, b"s" * 250
    assert [contents.place(big)[0] for _ in range(3)] == [0, 0, 0]
    contents.place(small)
    assert contents.place(small)[0] > 0 and contents.kept_bytes == 250




def _server_inode(server_port: int, client_port: int) -> str | None:
    """The inode of the relay's end of the TCP connection from ``client_port``."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        remote_port = int(fields[2].split(":")[1], 16)
        if (local_port, remote_port) == (server_port, client_port):
            return fields[9]
    return None


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_with_the_stdout_egress_the_child_serves_the_smtp_sessions(
        make_relay: Callable[..., RelayProcess]) -> None:
    relay = make_relay(egress="stdout").start()
    assert relay.process is not None
    with relay.repository() as repo:
        make_list(repo, "team@example.test", ["ann@members.test"])
    deadline = time.monotonic() + 10
    while not descendants(relay.process.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    [child] = descendants(relay.process.pid)
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.ehlo("client.test")
        client_port = client.sock.getsockname()[1]
        inode = _server_inode(relay.smtp_port, client_port)
        assert inode is not None
        assert inode in socket_inodes(child)                   # the session is the child's
        assert inode not in socket_inodes(relay.process.pid)
        client.sendmail("poster@outside.test", ["team@example.test"],
                        make_message("team@example.test", subject="via the child"))
    deadline = time.monotonic() + 20
    while b"RCPT TO:<ann@members.test>" not in relay.log_path.read_bytes() and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    assert "RCPT TO:<ann@members.test>" in relay.log()          # the stdout egress, in the relay
    assert "via the child" in relay.log()


async def test_a_child_that_cannot_build_its_egress_says_so_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a silent dead task the relay waits START_TIMEOUT (30 s) for."""
    from mailflow.child import worker
    from mailflow.child.messages import ChildConfig, SmtpEgressSpec

    def broken(spec: object) -> object:
        raise ValueError("no such provider")

    monkeypatch.setattr(worker, "build_egress", broken)
    sent: list[object] = []

    class Sink:
        def send(self, message: object) -> None:
            sent.append(message)

    child = worker._Child()
    child.channel = Sink()  # type: ignore[assignment]
    spec = SmtpEgressSpec(parse_smtp_relay("smtp://127.0.0.1:25"), 1, 5.0, 10.0)
    await child._start(ChildConfig({"smtp": spec}, None))
    assert len(sent) == 1 and isinstance(sent[0], StartFailed)
    assert "no such provider" in sent[0].reason
