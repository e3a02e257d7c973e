"""Mail addresses: the one place that decides how they are validated and compared.

Lists and aliases are matched case-insensitively (as every mail server users know does),
so addresses are stored in a canonical lower-case form.  An internationalised domain is
kept in one form only, its IDNA 2008 A-labels after UTS #46 mapping (``ünïcode.example``,
``ÜNÏCODE。example`` and the ASCII ``xn--ncode-cta3g.example`` are one domain), and a
non-ASCII local part in Unicode NFC: the CLI stores that form and every ingress (SMTP,
LMTP, HTTP, pipe, the policy service) looks it up in that form, through :func:`canonical`.
User input is validated with ``email-validator``; envelope addresses from SMTP peers only
need to be split, because the recipient lookup already rejects anything we do not know.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

import idna
from email_validator import EmailNotValidError, validate_email

from mailflow.errors import InvalidInput

BOUNCES_SUFFIX = "-bounces"
# A list's robot addresses (``team-join@d`` ...) and what each one is for.
ROBOT_SUFFIXES = {"-join": "join", "-leave": "leave", "-request": "request",
                  "-owner": "owner"}
TAG_SEPARATOR = "+"
TAG_MAX_LENGTH = 64
# What a plus tag may contain: it reaches the X-MailFlow-Tag field of every copy, so
# nothing that could end or fold a header line, and nothing a filter would need to decode.
TAG_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._=-")


def canonical(address: str) -> str:
    """The form addresses are stored and looked up in (never raises).

    A domain that is not a valid IDN is only lower-cased: no served domain has that
    form, so the lookup refuses it, and :func:`domain_problem` says why.
    """
    text = address.strip().strip("<>")
    if text.isascii():  # the usual case: nothing to map
        return text.lower()
    local, at, domain = text.rpartition("@")
    if not at:
        return unicodedata.normalize("NFC", text).lower()
    try:
        domain = _a_labels(domain)
    except UnicodeError:
        domain = domain.lower()
    return f"{unicodedata.normalize('NFC', local).lower()}@{domain}"


def a_labels(domain: str) -> str:
    """``domain`` in IDNA 2008 A-labels after UTS #46 mapping, lower case.

    Raises :class:`InvalidInput` naming the offending label for an invalid IDN.
    """
    try:
        return _a_labels(domain)
    except UnicodeError as exc:  # idna.IDNAError and its kind are UnicodeErrors
        raise InvalidInput(f"invalid domain {domain!r}: {exc}") from None


def _a_labels(domain: str) -> str:
    if domain.isascii():
        return domain.lower()
    return idna.encode(domain, uts46=True).decode("ascii").lower()


def u_labels(domain: str) -> str:
    """The Unicode form of a stored domain, for people (the A-labels if not an IDN)."""
    if "xn--" not in domain:
        return domain
    try:
        return str(idna.decode(domain))
    except UnicodeError:
        return domain


def domain_problem(address: str) -> str | None:
    """Why the domain of ``address`` cannot be any domain (an invalid IDN), or None."""
    _, domain = split(address)
    if not domain or (domain.isascii() and "xn--" not in domain):
        return None
    try:
        if domain.isascii():
            idna.decode(domain)  # its xn-- labels must be valid A-labels
        else:
            _a_labels(domain)
    except UnicodeError as exc:
        return f"the domain {domain!r} is not a valid internationalised domain name ({exc})"
    return None


def split(address: str) -> tuple[str, str]:
    """``local@domain`` -> (local, domain); an address without ``@`` has no domain."""
    local, _, domain = canonical(address).rpartition("@")
    return (local, domain) if local else (domain, "")


def untagged(address: str) -> tuple[str, str]:
    """``alias+tag@d`` (canonical) -> (``alias@d``, ``tag``); (address, '') without a tag.

    Only a valid tag counts (1 to :data:`TAG_MAX_LENGTH` characters of
    :data:`TAG_CHARACTERS`, after the first ``+``): an address with any other tag is
    looked up as it is, and so is unknown unless it exists exactly.
    """
    local, _, domain = address.rpartition("@")
    base, separator, tag = local.partition(TAG_SEPARATOR)
    if (not separator or not base or not domain or not tag or len(tag) > TAG_MAX_LENGTH
            or not TAG_CHARACTERS.issuperset(tag)):
        return address, ""
    return f"{base}@{domain}", tag


# An ASCII dot-atom local part (RFC 5322 atext, dots between atoms): email-validator
# accepts every one of at most 64 characters as it is, whatever the domain.
_ATOM: Final = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM: Final = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")
LOCAL_MAX_LENGTH: Final = 64
ADDRESS_MAX_LENGTH: Final = 254
# Domains email-validator accepted (as typed, lower-cased) -> their canonical form.  A
# member file has a few domains for many addresses; the domain check is most of the
# cost of a validation.  At most this many entries of at most 253 characters each.
_KNOWN_DOMAINS_MAX: Final = 10_000
_known_domains: dict[str, str] = {}


def validated(address: str) -> str:
    """Validate an address a user typed and return its canonical form."""
    text = address.strip()
    local, at, domain = text.rpartition("@")
    if (at and text.isascii() and len(local) <= LOCAL_MAX_LENGTH
            and len(text) <= ADDRESS_MAX_LENGTH and _DOT_ATOM.fullmatch(local)):
        known = _known_domains.get(domain.lower())
        if known is not None:  # what email-validator answered for this domain before
            return f"{local.lower()}@{known}"
    try:
        result = validate_email(
            text, check_deliverability=False, test_environment=True,
            globally_deliverable=False,
        )
    except EmailNotValidError as exc:
        raise InvalidInput(f"invalid address {address!r}: {exc}") from None
    # email-validator checked the domain; canonical() gives it the one form it is
    # looked up in (its A-labels, the same as result.ascii_domain).
    found = canonical(f"{result.local_part}@{result.domain}")
    if domain.isascii():
        if len(_known_domains) >= _KNOWN_DOMAINS_MAX:
            _known_domains.clear()
        _known_domains[domain.lower()] = found.rpartition("@")[2]
    return found


def validated_domain(name: str) -> str:
    """Validate a domain name a user typed (by validating postmaster@ it)."""
    domain = name.strip().rstrip(".")
    if not domain or "@" in domain:
        raise InvalidInput(f"invalid domain {name!r}")
    a_labels(domain)  # idna's reason names the label, email-validator's the address
    try:
        return split(validated(f"postmaster@{domain}"))[1]
    except InvalidInput as exc:
        reason = str(exc).partition(": ")[2]
        raise InvalidInput(f"invalid domain {name!r}: {reason}") from None


def bounces_address(list_address: str) -> str:
    """The envelope sender of a list's outbound mail: ``<list>-bounces@<domain>``.

    An address without a domain (the postmaster role alias) has none: the null sender.
    """
    local, domain = split(list_address)
    return f"{local}{BOUNCES_SUFFIX}@{domain}" if domain else ""
