"""Mail addresses: the one place that decides how they are validated and compared.

Lists and aliases are matched case-insensitively (as every mail server users know does),
so addresses are stored in a canonical lower-case form.  User input is validated with
``email-validator``; envelope addresses from SMTP peers only need to be split, because
the recipient lookup already rejects anything we do not know.
"""

from __future__ import annotations

from email_validator import EmailNotValidError, validate_email

from mailflow.errors import InvalidInput

BOUNCES_SUFFIX = "-bounces"
TAG_SEPARATOR = "+"
TAG_MAX_LENGTH = 64
# What a plus tag may contain: it reaches the X-MailFlow-Tag field of every copy, so
# nothing that could end or fold a header line, and nothing a filter would need to decode.
TAG_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._=-")


def canonical(address: str) -> str:
    """The form addresses are stored and looked up in."""
    return address.strip().strip("<>").lower()


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


def validated(address: str) -> str:
    """Validate an address a user typed and return its canonical form."""
    try:
        result = validate_email(
            address.strip(), check_deliverability=False, test_environment=True,
            globally_deliverable=False,
        )
    except EmailNotValidError as exc:
        raise InvalidInput(f"invalid address {address!r}: {exc}") from None
    return canonical(result.ascii_email or result.normalized)


def validated_domain(name: str) -> str:
    """Validate a domain name a user typed (by validating postmaster@ it)."""
    domain = name.strip().lower().rstrip(".")
    if not domain or "@" in domain:
        raise InvalidInput(f"invalid domain {name!r}")
    return split(validated(f"postmaster@{domain}"))[1]


def bounces_address(list_address: str) -> str:
    """The envelope sender of a list's outbound mail: ``<list>-bounces@<domain>``."""
    local, domain = split(list_address)
    return f"{local}{BOUNCES_SUFFIX}@{domain}"
