"""Filter rules of lists and aliases: the first rule whose condition holds decides.

A rule has one condition (a header field, the body text, the size, an attachment's type
or file name, "not encrypted") and one action (reject, discard, hold; or tag and strip,
which accept here and change the copies in the send chain, ``pipeline/send/``).  Each recipient
(a list or alias) has its own rules, tried in the order they were added; the rules of
all of a message's recipients come from one question to :class:`FilterRules`.

Two things keep a hostile rule or message from stalling the relay:

* **Regular expressions run with a time budget** (the ``regex`` module's ``timeout``):
  every regular expression a message is matched against draws on one budget per
  message (``filter_regex_timeout``), so neither a catastrophic pattern nor a huge body
  nor many rules can hold a thread longer than that.  A search that runs out counts as
  *no match* and is logged (``filter_timeout``): a filter is a convenience of the list
  owner, and refusing or holding mail because a pattern is slow would let a sender's
  body decide the outcome; the relay's own limits (size, loops, blocklists) do not
  depend on it.
* **The MIME walk runs off the event loop**, on a small pool of its own, and only when a
  recipient has rules at all; a message is parsed at most once, and only as far as its
  rules need (the header section alone for header and encryption conditions).
* **Except for a small message of one part**, tried on the event loop first: there is
  no MIME walk to do (its one part's text is its body), and its regular expressions get
  a short budget of their own (``INLINE_SECONDS``), without letting go of the GIL.  Most
  mail to a list is such a message, and for it the hop to a filter thread and back cost
  the relay more CPU than the rules themselves (two more threads handing the GIL to the
  event loop and the writer thread, a wake-up each way).  Should the short budget run
  out, the try is dropped, unlogged, and the message goes to the filter threads with
  the whole of ``filter_regex_timeout``, as a larger one does: the event loop is never
  held for longer than that short budget by a rule's pattern.

And one thing keeps the common case cheap: a pattern's required text (:mod:`.literals`)
is looked for before it is searched, in the header section as a whole before its fields
are split out, so mail that holds none of the rules' words costs no search at all (and
no read of the CPU clock, which a time-bounded search makes).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import fnmatch
import functools
import logging
import re
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesHeaderParser
from typing import Final, NamedTuple, Protocol

import regex

from mailflow import headers
from mailflow.errors import FilterRejected
from mailflow.model import COPY_ACTIONS, FilterAction, FilterCondition, FilterRule
from mailflow.pipeline.accept.literals import RequiredText, required_text
from mailflow.pipeline.context import Decision, MessageContext, Recipient

log = logging.getLogger(__name__)

# Top-level types of an encrypted message: PGP/MIME (RFC 3156) and S/MIME (RFC 8551).
ENCRYPTED_TYPES: Final = frozenset({"multipart/encrypted", "application/pkcs7-mime",
                                    "application/x-pkcs7-mime"})
_COMPILED_PATTERNS: Final = 256  # distinct regular expressions kept compiled
_PARSE_THREADS: Final = 2
# A message tried on the event loop first: at most this large, of one part (no MIME
# walk), its regular expressions within this time together.
INLINE_MAX_BYTES: Final = 64 * 1024
INLINE_SECONDS: Final = 0.005


class _GaveUp(Exception):
    """A try on the event loop would take more than its short budget: the filter threads
    decide instead."""


class FilterRules(Protocol):
    """The filter rules the accept step needs (``services.filter_rules`` in the relay)."""

    async def rules_for(self, targets: Sequence[str]) -> Mapping[str, Sequence[FilterRule]]:
        """The rules of each address of ``targets`` (canonical) that has any, in order."""
        ...


@functools.lru_cache(maxsize=_COMPILED_PATTERNS)
def compiled(pattern: str) -> regex.Pattern[str]:
    """A rule's regular expression, compiled once (validated when the rule was added)."""
    return regex.compile(pattern)


class Budget:
    """The time every regular expression of one message may take, together.

    ``inline``: the budget of a try on the event loop, whose searches keep the GIL (no
    other thread is to run meanwhile) and which gives up (:class:`_GaveUp`) when spent.
    """

    def __init__(self, seconds: float, *, inline: bool = False) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.exhausted = False
        self.inline = inline
        self._cpu_start: float | None = None  # read at the first search (a system call)

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0 and self.inline:
            # On a busy machine the wall clock also runs while the loop waits for a core;
            # the loop's own time is what its budget bounds (read only then: a system
            # call, where the wall clock is not), from its first search on.
            cpu = time.thread_time()
            if self._cpu_start is None:
                self._cpu_start = cpu
            left = self.seconds - (cpu - self._cpu_start)
            self.deadline = time.monotonic() + left
        return left

    def search(self, pattern: str, text: str, rule: FilterRule) -> bool:
        """Whether ``pattern`` occurs in ``text``; False once the budget is spent."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            left = self._left()
        if left <= 0 or self.exhausted:
            self._ran_out(rule)
            return False
        if self.inline and self._cpu_start is None:
            self._cpu_start = time.thread_time()
        try:
            # concurrent (on a filter thread): the search lets go of the GIL, so the
            # event loop keeps running.
            return compiled(pattern).search(text, timeout=left,
                                            concurrent=not self.inline) is not None
        except TimeoutError:
            self._ran_out(rule)
            return False

    def _ran_out(self, rule: FilterRule) -> None:
        if self.inline:
            raise _GaveUp
        if not self.exhausted:
            log.warning("filter rule of %s: regular expressions ran out of time; counted as "
                        "no match", rule.target, extra={"action": "filter_timeout"})
        self.exhausted = True


class ParsedMessage:
    """A message as the conditions see it, each part parsed only when first asked for.

    ``header``: the header section of ``raw`` (up to :func:`headers.header_length`).
    ``one_part_only``: a message that needs a MIME walk raises :class:`_GaveUp` instead
    (a try on the event loop).
    """

    def __init__(self, raw: bytes, header: bytes, *, one_part_only: bool = False) -> None:
        self.raw = raw
        self.header = header
        self.one_part_only = one_part_only
        self._fields: Message | None = None
        self._whole: Message | None = None
        self._by_name: dict[bytes, list[bytes]] | None = None
        self._reading: Reading | None = None
        self._read = False  # whether _reading was decided
        # Each walk once per message, however many rules ask.
        self._texts: list[str] | None = None
        self._attachments: list[tuple[str, str]] | None = None
        self._lowered_header: bytes | None = None
        self._plain_header: bool | None = None  # see fields_lack
        self._lowered: dict[str, str] = {}  # each text in lower case, once (at most
                                            # as many as the message's own texts)

    @property
    def fields(self) -> Message:
        if self._fields is None:
            self._fields = BytesHeaderParser(policy=email.policy.default).parsebytes(
                self.header)
        return self._fields

    @property
    def whole(self) -> Message:
        """The MIME structure, parsed with ``compat32``: the default policy parses a
        part's Content-Type again on every access, most of a rule's cost on a small
        message; decoded header values come from :attr:`fields` instead."""
        if self._whole is None:
            whole = None
            if self._one_part() is not None:
                whole = one_part(self.raw, self.header)
            if whole is None:
                whole = email.message_from_bytes(self.raw, policy=email.policy.compat32)
            self._whole = whole
        return self._whole

    def field_values(self, name: str) -> list[str]:
        """Each ``name`` field unfolded, its encoded words decoded; as written where they
        cannot be.  From the bytes, not the default policy's header objects, whose
        parsing (an address list's above all) cost more than the rules' searches; the
        header section split into fields once for all the rules, and not at all for a
        name it does not contain."""
        key = name.lower().encode()
        if key not in self.lowered_header:
            return []
        return [_decoded(headers.unfolded_value(field))
                for field in self._fields_by_name().get(key, ())]

    @property
    def lowered_header(self) -> bytes:
        if self._lowered_header is None:
            self._lowered_header = self.header.lower()
        return self._lowered_header

    def fields_lack(self, required: RequiredText) -> bool:
        """Whether no field's value can hold ``required``, told from the header section
        as a whole: only where a value is the section's own text (ASCII, no encoded
        word to decode) and ``required`` has no white space (unfolding changes only
        that), so that it is missing from every value if it is missing from the whole."""
        if self._plain_header is None:
            self._plain_header = self.header.isascii() and b"=?" not in self.header
        if required.spaced or not self._plain_header:
            return False
        if not required.text.isascii():
            return True  # no value holds anything but ASCII
        return required.text.encode() not in (
            self.lowered_header if required.folded else self.header)

    def lower(self, text: str) -> str:
        """``text`` in lower case, once per message however many rules ask."""
        lowered = self._lowered.get(text)
        if lowered is None:
            lowered = self._lowered[text] = text.lower()
        return lowered

    def _fields_by_name(self) -> dict[bytes, list[bytes]]:
        if self._by_name is None:
            self._by_name = headers.fields_by_name(self.header)
        return self._by_name

    def _one_part(self) -> Reading | None:
        """How to read this message as one part; None if it is not (or the header
        section is not clean): then a MIME walk, which a try on the event loop gives up."""
        if not self._read:
            self._reading = one_part_reading(self.header)
            self._read = True
        if self._reading is None and self.one_part_only:
            raise _GaveUp
        return self._reading

    def text_parts(self) -> list[str]:
        """The decoded text of every text part that is not an attachment."""
        if self._texts is None:
            reading = self._one_part()
            if reading is None or not reading.identity:
                self._texts = self._text_parts()
            elif reading.text:  # the body as it is, as get_payload(decode=True) gives it
                self._texts = [_text(self.raw[len(self.header):], reading.charset, skip=True)]
            else:
                self._texts = []
        return self._texts

    def _text_parts(self) -> list[str]:
        texts = []
        for part in self.whole.walk():
            if part.is_multipart() or part.get_content_disposition() == "attachment":
                continue
            maintype = part.get_content_maintype()
            if maintype not in ("text", "multipart"):  # (multipart without a usable
                continue                                 # boundary: a reader sees text)
            payload = part.get_payload(decode=True)
            if not isinstance(payload, bytes):
                continue
            charset = "utf-8" if maintype == "multipart" else (
                part.get_content_charset() or "us-ascii")
            texts.append(_text(payload, charset))
        return texts

    def attachments(self) -> list[tuple[str, str]]:
        """(MIME type, file name) of every attachment, both in lower case."""
        if self._attachments is None:
            # One part: the root is no attachment (a walk would skip it).
            self._attachments = [] if self._one_part() is not None else (
                self._attachment_list())
        return self._attachments

    def _attachment_list(self) -> list[tuple[str, str]]:
        found = []
        root = self.whole
        for part in root.walk():
            if part.is_multipart() or part is root:
                continue
            filename = _decoded(part.get_filename() or "")
            content_type = part.get_content_type()
            if (part.get_content_disposition() == "attachment" or filename
                    or not content_type.startswith("text/")):
                found.append((content_type.lower(), filename.lower()))
        return found

    def encrypted(self) -> bool:
        content_type = self.fields.get_content_type().lower()
        if content_type not in ENCRYPTED_TYPES:
            return False
        # S/MIME also wraps a signature alone in pkcs7-mime; that is not encryption.
        return str(self.fields.get_param("smime-type", "") or "").lower() != "signed-data"


# A header section ``compat32`` parses with no defect and no line taken for the body:
# fields ("name:", the name printable US-ASCII but the colon, as the parser's own test)
# with their continuation lines, each line ended by a line break.
_CLEAN_HEADER: Final = re.compile(rb"(?:[!-9;-~]+:[^\r\n]*\r?\n(?:[ \t][^\r\n]*\r?\n)*)*")
# All that the conditions read of a part besides its payload: type and its parameters
# (charset, name), transfer encoding, disposition and its file name.
_STRUCTURE_FIELDS: Final = (b"content-type", b"content-transfer-encoding",
                            b"content-disposition")


class Reading(NamedTuple):
    """How a message of one part is read: as text or not (an attachment, not text), in
    which charset, and whether its body is its content as it is (no quoted-printable,
    base64 or uuencode to undo)."""

    text: bool
    charset: str
    identity: bool


# A structure field of a clean header section: its name at the start of a line (a
# continuation line starts with white space), its continuation lines.
_STRUCTURE_FIELD: Final = re.compile(
    rb"^(content-(?:type|transfer-encoding|disposition)):[^\r\n]*\r?\n(?:[ \t][^\r\n]*\r?\n)*",
    re.MULTILINE | re.IGNORECASE)


def structure_fields(header: bytes) -> tuple[bytes, ...]:
    """The structure fields of a clean header section (``_CLEAN_HEADER``), by name in
    ``_STRUCTURE_FIELDS``' order, each name's as they come: what
    :func:`headers.fields_by_name` gives for those names, without splitting the whole
    section into fields."""
    found = sorted(((_STRUCTURE_FIELDS.index(match[1].lower()), match[0])
                    for match in _STRUCTURE_FIELD.finditer(header)),
                   key=lambda found: found[0])  # stable: each name's in order
    return tuple(field for _, field in found)


_ENCODED: Final = frozenset({"quoted-printable", "base64", "x-uuencode", "uuencode", "uue",
                             "x-uue"})  # what compat32's get_payload(decode=True) undoes
_READINGS: Final = 256  # distinct structure fields remembered, each at most ...
_READING_KEY_BYTES: Final = 1024  # ... this long together: 256 KiB at most


def one_part_reading(header: bytes) -> Reading | None:
    """How the message of ``header`` is read, if it has one part (see :func:`one_part`);
    decided once per distinct set of structure fields (most mail to a list repeats a
    few), as ``compat32`` decides it: the ``email`` package's field methods were most of
    the cost of a small message's body conditions."""
    if not _CLEAN_HEADER.fullmatch(header):
        return None
    key = structure_fields(header)
    if sum(map(len, key)) > _READING_KEY_BYTES:
        return _reading(key)
    return _remembered_reading(key)


def _reading(structure: tuple[bytes, ...]) -> Reading | None:
    root = _structure(structure)
    maintype = root.get_content_maintype()
    if maintype in ("multipart", "message"):
        return None
    return Reading(text=maintype == "text" and root.get_content_disposition() != "attachment",
                   charset=root.get_content_charset() or "us-ascii",
                   identity=str(root.get("content-transfer-encoding", "")).lower()
                   not in _ENCODED)


_remembered_reading: Final = functools.lru_cache(maxsize=_READINGS)(_reading)


def _structure(fields: Sequence[bytes]) -> Message:
    """A ``compat32`` message of ``fields`` alone, each stored as its parser stores it."""
    policy = email.policy.compat32
    root = Message(policy)
    for field in fields:  # as the bytes parser reads it: other bytes as surrogates
        lines = field.decode("ascii", "surrogateescape").splitlines(keepends=True)
        root.__setitem__(*policy.header_source_parse(lines))
    return root


def _text(payload: bytes, charset: str, *, skip: bool = False) -> str:
    """``payload`` decoded (``skip``: after the blank line that ends a header section)."""
    if skip:
        payload = payload[2:] if payload.startswith(b"\r\n") else payload[1:]
    try:
        return payload.decode(charset, "replace")
    except LookupError:  # an unknown charset: decode what is there
        return payload.decode("utf-8", "replace")


def one_part(raw: bytes, header: bytes) -> Message | None:
    """``raw`` as ``compat32`` parses it, as far as the conditions read it, for a
    message of one part (neither multipart nor message/*): the fields that describe its
    structure, each as the parser stores it, and its body as the payload, which is all
    the parser does with such a body.  None for any other message, or a header section
    the parser would not read as fields alone: the whole parse decides those.

    ``header``: ``raw``'s header section (up to :func:`headers.header_length`).  The
    parser splits the body into lines and builds every field; on a small message that
    was most of the conditions' cost.
    """
    if not _CLEAN_HEADER.fullmatch(header):
        return None
    root = _structure(structure_fields(header))
    if root.get_content_maintype() in ("multipart", "message"):
        return None
    body = raw[len(header):]  # the blank line that ends the header section, the body
    body = body[2:] if body.startswith(b"\r\n") else body[1:]
    root.set_payload(body.decode("ascii", "surrogateescape"))
    return root


def _decoded(text: str) -> str:
    """A field value or file name (as many mail programs write them) with its RFC 2047
    encoded words read."""
    if "=?" not in text:
        return text
    try:
        return str(make_header(decode_header(text)))
    except Exception:  # a malformed encoded word: the text as written
        return text


# The conditions as module constants: an enum member's lookup on its class costs more
# than some conditions' test (every rule of every message asks).
_HEADER: Final = FilterCondition.HEADER
_BODY: Final = FilterCondition.BODY
_LARGER_THAN: Final = FilterCondition.LARGER_THAN
_NOT_ENCRYPTED: Final = FilterCondition.NOT_ENCRYPTED


def holds(rule: FilterRule, message: ParsedMessage, budget: Budget) -> bool:
    """Whether ``rule``'s condition holds for ``message``."""
    condition = rule.condition
    if condition is _HEADER or condition is _BODY:  # (loops: cheaper than any() here)
        # A text without the pattern's required text is not searched (literals.py).
        required = required_text(rule.argument)
        if condition is _HEADER:
            if required is not None and message.fields_lack(required):
                return False
            texts = message.field_values(rule.header)
        else:
            texts = message.text_parts()
        for text in texts:
            if required is not None and required.missing_from(text, message.lower):
                continue
            if budget.search(rule.argument, text, rule):
                return True
        return False
    if condition is _LARGER_THAN:
        return len(message.raw) > int(rule.argument)
    if condition is _NOT_ENCRYPTED:
        return not message.encrypted()
    return any(attachment_matches(content_type, filename, rule.argument)
               for content_type, filename in message.attachments())


def attachment_matches(content_type: str, filename: str, glob: str) -> bool:
    """Whether an attachment's MIME type or file name matches ``glob`` (any case)."""
    glob = glob.lower()
    return (fnmatch.fnmatchcase(content_type.lower(), glob)
            or bool(filename and fnmatch.fnmatchcase(filename.lower(), glob)))


def first_matches(raw: bytes, header: bytes, rules: Mapping[str, Sequence[FilterRule]],
                  timeout: float) -> dict[str, FilterRule]:
    """The deciding rule per recipient (those without a matching rule are left out).

    Blocking (parses, runs regular expressions): called on the filter threads.
    """
    return _first_matches(ParsedMessage(raw, header), rules, Budget(timeout))


def first_matches_inline(raw: bytes, header: bytes, rules: Mapping[str, Sequence[FilterRule]]
                         ) -> dict[str, FilterRule] | None:
    """:func:`first_matches` on the event loop, for a small message of one part; None
    where that would take a MIME walk or more than ``INLINE_SECONDS`` of searching."""
    if len(raw) > INLINE_MAX_BYTES:
        return None
    try:
        return _first_matches(ParsedMessage(raw, header, one_part_only=True), rules,
                              Budget(INLINE_SECONDS, inline=True))
    except _GaveUp:
        return None


def _first_matches(message: ParsedMessage, rules: Mapping[str, Sequence[FilterRule]],
                   budget: Budget) -> dict[str, FilterRule]:
    decided: dict[str, FilterRule] = {}
    for target, target_rules in rules.items():
        for rule in target_rules:
            try:
                matched = holds(rule, message, budget)
            except _GaveUp:
                raise
            except Exception:
                # Whatever the sender's MIME makes the parser do, the rule cannot judge
                # it: no match (as a timeout), never a 451 the sender would retry for ever.
                log.exception("filter rule of %s could not be applied; counted as no match",
                              target, extra={"action": "filter_error"})
                matched = False
            if matched:
                decided[target] = rule
                break
    return decided


def decision(rule: FilterRule) -> Decision:
    """What a matching rule makes of its recipient."""
    noun = f"filter rule of {rule.target}"
    text = headers.header_safe(rule.text)
    if rule.action is FilterAction.REJECT:
        return Decision.reject(FilterRejected(text or f"refused by a {noun}"))
    reason = f"{noun} ({describe(rule)})" + (f": {text}" if text else "")
    if rule.action is FilterAction.HOLD:
        return Decision.hold(reason)
    return Decision.discard(reason)


def describe(rule: FilterRule) -> str:
    """A rule's condition as ``filter ls`` and events show it."""
    condition = rule.condition
    if condition is FilterCondition.HEADER:
        return f"header {rule.header} matches {rule.argument}"
    if condition is FilterCondition.BODY:
        return f"body matches {rule.argument}"
    if condition is FilterCondition.LARGER_THAN:
        return f"larger than {rule.argument} bytes"
    if condition is FilterCondition.ATTACHMENT:
        return f"attachment {rule.argument}"
    return "not encrypted"


class MessageFilters:
    """The accept step: each recipient's filter rules, first match wins."""

    def __init__(self, rules: FilterRules, timeout: float) -> None:
        self.rules = rules
        self.timeout = timeout
        self._pool: ThreadPoolExecutor | None = None

    async def __call__(self, ctx: MessageContext, pending: Sequence[Recipient]
                       ) -> Mapping[str, Decision]:
        found = await self.rules.rules_for([r.canonical for r in pending])
        if not found:  # the usual case: no recipient has a rule
            return {}
        matched = first_matches_inline(ctx.raw, ctx.header, found)
        if matched is None:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(_PARSE_THREADS,
                                                thread_name_prefix="mailflow-filters")
            matched = await asyncio.get_running_loop().run_in_executor(
                self._pool, first_matches, ctx.raw, ctx.header, found, self.timeout)
        # A tag or strip rule that matches first accepts: it changes the copies later.
        return {target: decision(rule) for target, rule in matched.items()
                if rule.action not in COPY_ACTIONS}
