"""Checks that an SNS message comes from SNS: signature, certificate origin, topic, age.

Anyone can POST to the webhook; what makes a message Amazon's is its signature, by the
key of a certificate fetched only from an address matching ``sns_cert_url_pattern``
(SNS's own hosts by default), over the fields AWS documents for each message type.
Refusals are :class:`ForgedMessage` with a short reason for the log and the metric.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from mailflow.clock import Clock
from mailflow.lru import BytesLRU

log = logging.getLogger(__name__)

MAX_AGE = 3600.0  # seconds: an SNS message older than this (or as far ahead) is refused
CERT_CACHE_BYTES = 256 * 1024  # a certificate is about 2 KB
MAX_CERT_SIZE = 16 * 1024

# The fields signed, in the order AWS documents, for each message type.
SIGNED_FIELDS: dict[str, tuple[str, ...]] = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token",
                                 "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token",
                                "TopicArn", "Type"),
}
OPTIONAL_FIELDS = frozenset({"Subject"})
HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "1": hashes.SHA1, "2": hashes.SHA256}

#: Fetches a certificate (PEM) from a URL already checked against the pattern.
CertFetcher = Callable[[str], Awaitable[bytes]]


class ForgedMessage(Exception):
    """Not a genuine SNS message for us: ``reason`` is one word for logs and metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(detail)


def string_to_sign(message: Mapping[str, Any]) -> bytes:
    """The bytes SNS signed: ``name\\nvalue\\n`` for each signed field present."""
    kind = message.get("Type")
    fields = SIGNED_FIELDS.get(kind) if isinstance(kind, str) else None
    if fields is None:
        raise ForgedMessage("type", f"unknown SNS message type {kind!r}")
    parts = []
    for name in fields:
        value = message.get(name)
        if value is None and name in OPTIONAL_FIELDS:
            continue
        if not isinstance(value, str):
            raise ForgedMessage("unsigned", f"the signed field {name} is missing")
        parts.append(f"{name}\n{value}\n")
    return "".join(parts).encode()


def parse_timestamp(value: object) -> float:
    """An SNS ``Timestamp`` (ISO 8601, UTC) as seconds since the epoch."""
    if not isinstance(value, str):
        raise ForgedMessage("unsigned", "no Timestamp")
    try:
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ForgedMessage("unsigned", f"unreadable Timestamp {value[:40]!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


class SnsVerifier:
    """Verifies SNS messages for the topics allowed; certificates are cached by URL."""

    def __init__(self, topics: tuple[str, ...], cert_url_pattern: str, clock: Clock,
                 fetch: CertFetcher) -> None:
        """``topics``: the ARNs whose messages are taken (none: every message refused);
        ``fetch`` gets a certificate's PEM (with a timeout: see ``ingress.sns``)."""
        self.topics = frozenset(topics)
        self.pattern = re.compile(cert_url_pattern)
        self.clock = clock
        self.fetch = fetch
        self.certs: BytesLRU[str] = BytesLRU(CERT_CACHE_BYTES, MAX_CERT_SIZE)

    async def verify(self, message: Mapping[str, Any]) -> None:
        """Raise :class:`ForgedMessage` unless ``message`` is a signed, fresh SNS message
        of an allowed topic.  The cheap checks come first: a forger costs no fetch."""
        signed = string_to_sign(message)
        topic = message.get("TopicArn")
        if topic not in self.topics:
            raise ForgedMessage("topic", f"topic {str(topic)[:200]!r} is not in sns_topics")
        age = self.clock.now() - parse_timestamp(message.get("Timestamp"))
        if abs(age) > MAX_AGE:
            raise ForgedMessage("stale", f"Timestamp is {age:.0f} s off")
        algorithm = HASHES.get(str(message.get("SignatureVersion")))
        if algorithm is None:
            raise ForgedMessage("unsigned", "unknown SignatureVersion "
                                f"{str(message.get('SignatureVersion'))[:10]!r}")
        try:
            signature = base64.b64decode(str(message.get("Signature", "")), validate=True)
        except binascii.Error:
            raise ForgedMessage("signature", "Signature is not base64") from None
        if not signature:
            raise ForgedMessage("unsigned", "no Signature")
        key = await self.public_key(message.get("SigningCertURL"))
        try:
            key.verify(signature, signed, padding.PKCS1v15(), algorithm())
        except InvalidSignature:
            raise ForgedMessage("signature", "the signature does not match") from None

    def cert_url_allowed(self, url: object) -> bool:
        return isinstance(url, str) and self.pattern.fullmatch(url) is not None

    async def public_key(self, url: object) -> rsa.RSAPublicKey:
        if not isinstance(url, str) or not self.cert_url_allowed(url):
            raise ForgedMessage("certificate", f"SigningCertURL {str(url)[:200]!r} does not "
                                "match sns_cert_url_pattern")
        pem = self.certs.get(url)
        if pem is None:
            try:
                pem = await self.fetch(url)
            except Exception as exc:  # unreachable, slow or refusing: not SNS for us now
                log.warning("cannot fetch the SNS certificate %s: %s", url, exc,
                            extra={"action": "sns_cert_unavailable"})
                raise ForgedMessage("certificate", "the signing certificate could not be "
                                    "fetched") from None
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError:
            raise ForgedMessage("certificate", "the signing certificate is not PEM") from None
        now = datetime.datetime.fromtimestamp(self.clock.now(), datetime.UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise ForgedMessage("certificate", "the signing certificate is not valid now")
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise ForgedMessage("certificate", "the signing key is not RSA")
        self.certs.put(url, pem)
        return key
