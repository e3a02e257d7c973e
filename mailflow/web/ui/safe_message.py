"""A held message made safe to show a moderator in the web UI.

A held post is, by definition, mail nobody has vetted: spam, phishing, a tracking pixel
or a hostile page.  What a moderator sees of it must neither run anything, nor fetch
anything (a remote image tells the sender the moderator read it, and from where), nor
be able to pass for the UI itself.  So:

* header fields are decoded (encoded words) and shown as **text**, never markup;
* ``text/plain`` is shown as escaped, pre-wrapped text, in the moderation page itself:
  the template's autoescaping is the whole defence, and it is enough;
* ``text/html`` is sanitized with ``nh3`` (the ammonia HTML sanitizer) to an allowlist of
  formatting tags and attributes: no scripts, event handlers, forms, frames, SVG or
  MathML, no ``style`` elements, ``style`` attributes reduced to an allowlist of
  properties whose values cannot hold a URL, images only from the message itself
  (``cid:`` references become ``data:`` URIs of its own image parts, bounded; any other
  ``src`` is dropped), links only ``http``/``https``/``mailto`` with
  ``rel="noopener noreferrer nofollow"``;
* attachments are listed by (escaped, control-character-free) name, type and size, and
  never rendered or served;
* everything rendered is bounded: the bytes parsed, the parts walked, the fields, the
  text, the HTML, the inline images.

**The sanitized HTML goes into a sandboxed iframe** (``sandbox=""``: no scripts, an
opaque origin, no forms, no popups), served by its own route under a CSP of its own,
``default-src 'none'; img-src data:; style-src 'unsafe-inline'`` plus the CSP
``sandbox`` directive (so the frame stays sandboxed even when opened on its own), rather
than inline in the page.  Why not inline, after sanitizing?  Inline, the message's
markup shares the UI's document and origin: a sanitizer bug would be script running with
the moderator's session and CSRF token, its ``id``/``name`` attributes could clobber the
page's DOM, and its layout could draw over the approve/reject buttons; and the page's
own CSP (no inline styles) would strip the message's styling so the moderator would not
see what members would.  In the frame, the sanitizer is the first of three independent
walls (sanitizer, CSP without scripts or remote loads, sandbox without an origin), and
the message is shown with its own styles where they cannot reach the UI.
"""

from __future__ import annotations

import base64
import email
import email.policy
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.message import Message
from typing import Final

import nh3

# -- bounds ------------------------------------------------------------------------------

PARSE_MAX_BYTES: Final = 5 * 1024 * 1024    # of a larger message only its start is shown
MAX_PARTS: Final = 200                      # MIME parts walked
MAX_FIELDS: Final = 200                     # header fields listed
FIELD_MAX_CHARS: Final = 2000               # of one field's value
TEXT_MAX_CHARS: Final = 200_000             # of the text/plain body shown
HTML_MAX_CHARS: Final = 500_000             # of the text/html body sanitized
MAX_ATTACHMENTS: Final = 100                # attachments listed
NAME_MAX_CHARS: Final = 255                 # of an attachment's file name
INLINE_IMAGE_MAX_BYTES: Final = 512 * 1024  # one image shown from a cid: reference
INLINE_IMAGES_MAX_BYTES: Final = 2 * 1024 * 1024  # all of them together

#: The fields shown first, in this order (all of them are in ``RenderedMessage.fields``).
SUMMARY_FIELDS: Final = ("From", "Sender", "Reply-To", "To", "Cc", "Subject", "Date",
                         "Message-ID")

#: The CSP of the route that serves :attr:`RenderedMessage.html` (in its iframe).
FRAME_CSP: Final = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                    "base-uri 'none'; form-action 'none'; frame-ancestors 'self'; sandbox")

# -- the HTML allowlist ------------------------------------------------------------------

_TAGS: Final = frozenset({
    "a", "abbr", "acronym", "address", "b", "bdi", "big", "blockquote", "br", "caption",
    "center", "cite", "code", "col", "colgroup", "dd", "del", "details", "dfn", "div", "dl",
    "dt", "em", "figcaption", "figure", "font", "h1", "h2", "h3", "h4", "h5", "h6", "hr",
    "i", "img", "ins", "kbd", "li", "mark", "ol", "p", "pre", "q", "s", "samp", "small",
    "span", "strike", "strong", "sub", "summary", "sup", "table", "tbody", "td", "tfoot",
    "th", "thead", "tr", "tt", "u", "ul", "var", "wbr",
})
# Dropped with what they contain (the others not allowed lose the tag, keep the text).
_DROPPED: Final = frozenset({
    "script", "style", "template", "noscript", "iframe", "frame", "frameset", "object",
    "embed", "applet", "svg", "math", "title", "head", "textarea", "select", "button",
    "option", "canvas", "audio", "video", "picture", "source", "track", "noembed",
    "noframes", "xmp", "plaintext",
})
_COMMON_ATTRIBUTES: Final = {"title", "lang", "dir", "align", "valign", "width", "height",
                             "style"}
_ATTRIBUTES: Final = {
    "*": set(_COMMON_ATTRIBUTES),
    "a": {"href"},
    "img": {"src", "alt", "border"},
    "font": {"color", "face", "size"},
    "table": {"border", "cellpadding", "cellspacing", "bgcolor", "summary"},
    "td": {"colspan", "rowspan", "bgcolor", "nowrap"},
    "th": {"colspan", "rowspan", "bgcolor", "nowrap", "scope"},
    "tr": {"bgcolor"},
    "col": {"span"},
    "colgroup": {"span"},
    "ol": {"start", "type", "reversed"},
    "ul": {"type"},
    "li": {"value"},
    "blockquote": {"cite"},
    "q": {"cite"},
    "del": {"cite", "datetime"},
    "ins": {"cite", "datetime"},
    "details": {"open"},
}
_LINK_SCHEMES: Final = ("http:", "https:", "mailto:")
_CITE_ATTRIBUTES: Final = frozenset({"cite"})  # URLs nobody follows: dropped
# Properties that cannot take a URL (no background, list-style-image, content, cursor,
# border-image, filter, mask…) nor hide text from the moderator (no display, visibility,
# opacity, position: what members would not see is shown).
_STYLE_PROPERTIES: Final = frozenset({
    "color", "background-color", "font", "font-family", "font-size", "font-style",
    "font-weight", "font-variant", "text-align", "text-decoration", "text-indent",
    "text-transform", "letter-spacing", "word-spacing", "line-height", "white-space",
    "vertical-align", "width", "height", "max-width", "min-width", "max-height",
    "min-height", "margin", "margin-top", "margin-right", "margin-bottom", "margin-left",
    "padding", "padding-top", "padding-right", "padding-bottom", "padding-left", "border",
    "border-top", "border-right", "border-bottom", "border-left", "border-color",
    "border-style", "border-width", "border-collapse", "border-spacing", "border-radius",
    "table-layout", "direction",
})
# A declaration's value: words, numbers, colours, quoted font names, and rgb()/rgba()/
# hsl() colours; no backslash (CSS escapes), no other function, no comment, no '@'.
_STYLE_VALUE: Final = re.compile(
    r"(?:[\w\s#%.,'\"+-]|(?:rgba?|hsla?)\([\d\s.,%]*\))*", re.ASCII)
_INLINE_IMAGE_TYPES: Final = frozenset({"image/png", "image/gif", "image/jpeg",
                                        "image/webp"})
# Characters a name or a field is never shown with: controls, separators, and the
# bidirectional overrides and isolates that make "gpj.exe" read as "exe.jpg".
_BIDI_CONTROLS: Final = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
                                  "\u200e\u200f\u061c")
_HIDDEN_CATEGORIES: Final = frozenset({"Cc", "Cs", "Zl", "Zp", "Co", "Cn"})


@dataclass(frozen=True, slots=True)
class Attachment:
    name: str          # '' when the part has none; safe to show (no controls, bounded)
    content_type: str
    size: int          # decoded bytes
    inline: bool       # an image the HTML shows (by its Content-ID), not an attachment


@dataclass(frozen=True, slots=True)
class RenderedMessage:
    """What the moderation page shows of a message: text only, except :attr:`html`,
    which is sanitized and goes only into the sandboxed frame."""

    summary: tuple[tuple[str, str], ...]  # (name, decoded value) of SUMMARY_FIELDS found
    fields: tuple[tuple[str, str], ...]   # every field, in order, decoded
    text: str | None                      # the text/plain body
    html: str | None                      # the text/html body, sanitized
    attachments: tuple[Attachment, ...]
    truncated: tuple[str, ...]            # what was cut short, in words, for the page

    @property
    def subject(self) -> str:
        return next((value for name, value in self.summary if name == "Subject"), "")


def visible_text(text: str, limit: int) -> str:
    """``text`` with controls (line breaks too), bidi overrides and unassigned
    characters shown as U+FFFD, cut to ``limit`` characters: for one line."""
    cut = text[:limit]
    if cut.isprintable():
        return cut
    return "".join(
        "\ufffd" if (c in _BIDI_CONTROLS or unicodedata.category(c) in _HIDDEN_CATEGORIES)
        else c for c in cut)


def body_text(text: str, limit: int) -> str:
    """As :func:`visible_text`, keeping line breaks and tabs (a body, pre-wrapped)."""
    lines = text[:limit].replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(visible_text(line.replace("\t", "    "), limit) for line in lines)


def _decoded(value: str) -> str:
    """A field value or file name with its RFC 2047 encoded words read, as written
    where they cannot be."""
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except Exception:  # a malformed encoded word
        return value


def _walk(message: Message) -> Iterator[Message]:
    for count, part in enumerate(message.walk()):
        if count >= MAX_PARTS:
            return
        yield part


def _payload(part: Message) -> bytes:
    try:
        payload = part.get_payload(decode=True)
    except Exception:  # a broken transfer encoding: nothing to show of it
        return b""
    return payload if isinstance(payload, bytes) else b""


def _text_of(part: Message) -> str:
    payload = _payload(part)
    charset = part.get_content_charset() or "us-ascii"
    try:
        return payload.decode(charset, "replace")
    except LookupError:  # an unknown charset: what is there, as UTF-8
        return payload.decode("utf-8", "replace")


def _content_id(part: Message) -> str:
    value = str(part.get("Content-ID", "") or "").strip()
    return value[1:-1] if value.startswith("<") and value.endswith(">") else value


class _Images:
    """The message's own images an HTML body refers to by ``cid:``, as ``data:`` URIs,
    up to :data:`INLINE_IMAGES_MAX_BYTES` in all."""

    def __init__(self, parts: dict[str, Message]) -> None:
        self.parts = parts
        self.spent = 0
        self.shown: dict[str, str] = {}
        self.refused = False

    def uri(self, reference: str) -> str | None:
        content_id = reference[4:].strip()
        if content_id in self.shown:
            return self.shown[content_id]
        part = self.parts.get(content_id)
        if part is None:
            return None
        payload = _payload(part)
        if (len(payload) > INLINE_IMAGE_MAX_BYTES
                or self.spent + len(payload) > INLINE_IMAGES_MAX_BYTES):
            self.refused = True
            return None
        self.spent += len(payload)
        uri = (f"data:{part.get_content_type()};base64,"
               f"{base64.b64encode(payload).decode('ascii')}")
        self.shown[content_id] = uri
        return uri


def _style(value: str) -> str | None:
    """The declarations of a ``style`` attribute worth keeping, or ``None``."""
    kept = []
    for declaration in value.split(";"):
        name, colon, rest = declaration.partition(":")
        name, rest = name.strip().lower(), rest.strip()
        if (colon and name in _STYLE_PROPERTIES and rest
                and _STYLE_VALUE.fullmatch(rest) is not None):
            kept.append(f"{name}: {rest}")
    return "; ".join(kept) or None


def sanitized_html(html: str, images: _Images | None = None) -> str:
    """``html`` reduced to the allowlist (see the module's docstring); ``cid:`` images
    resolved by ``images`` (without it, dropped)."""

    def attribute(tag: str, name: str, value: str) -> str | None:
        if name == "style":
            return _style(value)
        if name in _CITE_ATTRIBUTES:
            return None
        if tag == "a" and name == "href":
            return value if value.strip().lower().startswith(_LINK_SCHEMES) else None
        if tag == "img" and name == "src":
            if value.lower().startswith("cid:") and images is not None:
                return images.uri(value)
            return None
        return value

    return nh3.clean(html, tags=set(_TAGS), clean_content_tags=set(_DROPPED),
                     attributes={k: set(v) for k, v in _ATTRIBUTES.items()},
                     attribute_filter=attribute, strip_comments=True,
                     link_rel="noopener noreferrer nofollow",
                     url_schemes={"http", "https", "mailto", "cid"}, url_relative="deny")


def _fields(message: Message) -> list[tuple[str, str]]:
    fields = []
    for name, value in message.items()[:MAX_FIELDS]:
        fields.append((visible_text(str(name), 100),
                       visible_text(" ".join(_decoded(str(value)).split()),
                                    FIELD_MAX_CHARS)))
    return fields


def render(raw: bytes) -> RenderedMessage:
    """What of ``raw`` the moderation page may show.  Blocking (a parse of up to
    :data:`PARSE_MAX_BYTES`): call it in a worker thread."""
    truncated: list[str] = []
    if len(raw) > PARSE_MAX_BYTES:
        raw = raw[:PARSE_MAX_BYTES]
        truncated.append(f"only the first {PARSE_MAX_BYTES // (1024 * 1024)} MiB of the "
                         "message were read")
    # compat32: the raw values, decoded here, so no header parse can fail on a field.
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    fields = _fields(message)
    if len(message.items()) > MAX_FIELDS:
        truncated.append(f"only the first {MAX_FIELDS} header fields are shown")
    wanted = {name.lower(): name for name in SUMMARY_FIELDS}
    summary = sorted(((wanted[n.lower()], v) for n, v in fields if n.lower() in wanted),
                     key=lambda field: SUMMARY_FIELDS.index(field[0]))

    text: str | None = None
    html_source: str | None = None
    attachments: list[Attachment] = []
    by_content_id: dict[str, Message] = {}
    walked = 0
    for part in _walk(message):
        walked += 1
        if part.is_multipart():
            continue
        content_type = part.get_content_type().lower()
        disposition = part.get_content_disposition()
        name = visible_text(_decoded(str(part.get_filename() or "")), NAME_MAX_CHARS)
        content_id = _content_id(part)
        if disposition != "attachment" and not name and content_type == "text/plain" \
                and text is None:
            text = _text_of(part)
            continue
        if disposition != "attachment" and not name and content_type == "text/html" \
                and html_source is None:
            html_source = _text_of(part)
            continue
        inline = bool(content_id) and content_type in _INLINE_IMAGE_TYPES
        if inline:
            by_content_id.setdefault(content_id, part)
        if len(attachments) < MAX_ATTACHMENTS:
            attachments.append(Attachment(name, visible_text(content_type, 255),
                                          len(_payload(part)), inline))
    if walked >= MAX_PARTS:
        truncated.append(f"only the first {MAX_PARTS} MIME parts were read")
    if len(attachments) >= MAX_ATTACHMENTS:
        truncated.append(f"only the first {MAX_ATTACHMENTS} attachments are listed")

    if text is not None and len(text) > TEXT_MAX_CHARS:
        truncated.append(f"the text is cut after {TEXT_MAX_CHARS} characters")
    html: str | None = None
    if html_source is not None:
        if len(html_source) > HTML_MAX_CHARS:
            truncated.append(f"the HTML is cut after {HTML_MAX_CHARS} characters")
            html_source = html_source[:HTML_MAX_CHARS]
        images = _Images(by_content_id)
        html = sanitized_html(html_source, images)
        if images.refused:
            truncated.append("some inline images are too large to show")
    return RenderedMessage(
        summary=tuple(summary), fields=tuple(fields),
        text=None if text is None else body_text(text, TEXT_MAX_CHARS),
        html=html, attachments=tuple(attachments), truncated=tuple(truncated))


def frame_document(rendered: RenderedMessage) -> str:
    """The whole document the sandboxed frame is served (under :data:`FRAME_CSP`)."""
    body = rendered.html if rendered.html is not None else ""
    return ("<!doctype html><html><head><meta charset=\"utf-8\">"
            "<meta name=\"referrer\" content=\"no-referrer\"></head>"
            f"<body>{body}</body></html>")
