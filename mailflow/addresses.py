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


def canonical(address: str) -> str:
    """The form addresses are stored and looked up in."""
    return address.strip().strip("<>").lower()


def split(address: str) -> tuple[str, str]:
    """``local@domain`` -> (local, domain); an address without ``@`` has no domain."""
    local, _, domain = canonical(address).rpartition("@")
    return (local, domain) if local else (domain, "")


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
