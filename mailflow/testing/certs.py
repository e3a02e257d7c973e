"""Self-signed certificates for tests, made by the ``openssl`` command, and a client's view
of the one a server presents.

An EC P-256 key takes milliseconds where RSA takes a good part of a second; the
certificate names ``relay.test`` and ``127.0.0.1``, so a client that connects to the
loopback address by number (as smtplib does) verifies it, host name included.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import smtplib
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Certificate:
    cert: Path
    key: Path

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the certificate, as ``openssl x509 -fingerprint -sha256`` prints it."""
        return colon_hex(ssl.PEM_cert_to_DER_cert(self.cert.read_text()))

    def install(self, cert: Path, key: Path) -> None:
        """Copy this pair to ``cert`` and ``key``, each replaced at once (as a renewal
        does by renaming), so a reader never sees half a file."""
        for source, target in ((self.cert, cert), (self.key, key)):
            partial = target.with_name(target.name + ".new")
            shutil.copyfile(source, partial)
            os.replace(partial, target)


def self_signed(folder: Path, stem: str, name: str = "relay.test") -> Certificate:
    """A new key and a self-signed certificate for ``name`` and 127.0.0.1, valid a day."""
    folder.mkdir(parents=True, exist_ok=True)
    made = Certificate(folder / f"{stem}.crt", folder / f"{stem}.key")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", f"/CN={name}",
         "-addext", f"subjectAltName=DNS:{name},IP:127.0.0.1",
         "-keyout", str(made.key), "-out", str(made.cert)],
        check=True, capture_output=True, timeout=30)
    return made


def colon_hex(der: bytes) -> str:
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def served_fingerprint(port: int, cafile: Path) -> str:
    """Connect to 127.0.0.1:``port``, STARTTLS verifying the server against ``cafile``
    (and its name, 127.0.0.1), and return the fingerprint of the certificate it shows."""
    context = ssl.create_default_context(cafile=str(cafile))
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as client:
        client.starttls(context=context)
        sock = client.sock
        assert isinstance(sock, ssl.SSLSocket)
        der = sock.getpeercert(binary_form=True)
    assert der is not None
    return colon_hex(der)
