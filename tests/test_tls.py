"""STARTTLS on the SMTP listener (issue 10, item 11): the certificate, its reload, and
a relay that verifying clients reach through it.

The certificates are made at test time (:mod:`mailflow.testing.certs`); the clients
verify them against a CA file holding both test certificates, host name included.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import smtplib
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailflow.app import Relay
from mailflow.config import load_settings
from mailflow.errors import ConfigurationError
from mailflow.ingress.tls import ServerTls, fingerprint, server_context
from mailflow.testing.certs import Certificate, self_signed, served_fingerprint
from mailflow.testing.factories import make_message
from mailflow.testing.ports import free_port
from mailflow.testing.relay import RelayProcess
from mailflow.testing.sink import SmtpSink


class Certs:
    """Two certificates (``old``, ``new``), the files a relay is told to read
    (``cert``, ``key``: ``old`` at first) and a CA file that trusts both."""

    def __init__(self, folder: Path) -> None:
        self.old = self_signed(folder, "old")
        self.new = self_signed(folder, "new")
        self.cafile = folder / "ca.pem"
        self.cafile.write_bytes(self.old.cert.read_bytes() + self.new.cert.read_bytes())
        self.cert, self.key = folder / "live.crt", folder / "live.key"
        self.old.install(self.cert, self.key)

    def install_mismatched(self) -> None:
        """The new certificate with the old key: a renewal caught half-way."""
        Certificate(self.new.cert, self.old.key).install(self.cert, self.key)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def live(certs: Certs) -> Iterator[Certs]:
    """``certs`` with the old certificate installed again after the test."""
    yield certs
    certs.old.install(certs.cert, certs.key)


# -- the certificate -----------------------------------------------------------------------

def test_the_context_speaks_tls_1_2_or_newer_and_asks_no_client_certificate(
        certs: Certs) -> None:
    context = server_context(certs.old.cert, certs.old.key)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE  # MTAs rarely have client certificates


def test_the_logged_fingerprint_is_the_one_openssl_prints(certs: Certs) -> None:
    printed = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(certs.old.cert)],
        check=True, capture_output=True, text=True).stdout
    assert fingerprint(certs.old.cert) == printed.strip().partition("=")[2]


def test_files_that_do_not_load_are_a_configuration_error_naming_them(
        certs: Certs, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=f"cannot load the TLS certificate "
                                                 f"{certs.new.cert} with the key {certs.old.key}"):
        server_context(certs.new.cert, certs.old.key)
    missing = tmp_path / "missing.crt"
    with pytest.raises(ConfigurationError, match=f"{missing} .*No such file"):
        server_context(missing, certs.old.key)
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    with pytest.raises(ConfigurationError, match="no PEM certificate"):
        fingerprint(not_pem)


async def test_a_reload_reads_the_files_again_and_keeps_the_old_ones_if_they_fail(
        live: Certs) -> None:
    tls = await ServerTls.load(live.cert, live.key, require=False)
    before = tls.context
    live.install_mismatched()
    with pytest.raises(ConfigurationError, match="cannot load the TLS certificate"):
        await tls.reload()
    assert tls.context is before and tls.fingerprint == live.old.fingerprint
    live.new.install(live.cert, live.key)
    assert await tls.reload() == live.new.fingerprint
    assert tls.context is not before


# -- settings ------------------------------------------------------------------------------

def test_the_tls_settings_go_together(certs: Certs, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError,
                       match="tls_cert_file is set but tls_key_file is not"):
        load_settings(None, data_dir=tmp_path, tls_cert_file=certs.cert)
    with pytest.raises(ConfigurationError,
                       match="tls_key_file is set but tls_cert_file is not"):
        load_settings(None, data_dir=tmp_path, tls_key_file=certs.key)
    with pytest.raises(ConfigurationError, match="smtp_require_tls needs tls_cert_file"):
        load_settings(None, data_dir=tmp_path, smtp_require_tls=True)
    off = load_settings(None, data_dir=tmp_path, tls_cert_file="", tls_key_file="")
    assert off.tls_files is None
    on = load_settings(None, data_dir=tmp_path, tls_cert_file=certs.cert, tls_key_file=certs.key)
    assert on.tls_files == (certs.cert, certs.key)


# -- a relay in this process ---------------------------------------------------------------

def _relay(tmp_path: Path, certs: Certs, key: Path, **settings: object) -> tuple[Relay, int]:
    port = free_port()
    return Relay(load_settings(
        None, data_dir=tmp_path, smtp_listen=f"127.0.0.1:{port}", http_listen="off",
        egress="stdout", hostname="relay.test", tls_cert_file=certs.cert, tls_key_file=key,
        **settings)), port


async def test_a_certificate_that_does_not_load_stops_the_start(live: Certs,
                                                                 tmp_path: Path) -> None:
    relay, _ = _relay(tmp_path, live, live.new.key)
    with pytest.raises(ConfigurationError, match="cannot load the TLS certificate"):
        await relay.start()
    assert relay.runner is None and relay.child is None  # nothing was started


@pytest.mark.parametrize("listener_process", [True, False])
async def test_a_reload_serves_the_new_certificate_to_new_sessions(
        live: Certs, tmp_path: Path, listener_process: bool,
        caplog: pytest.LogCaptureFixture) -> None:
    """The SIGHUP handler's work, in both places the sessions can run: the relay's child
    (the reload crosses to it as a message) or the relay itself."""
    relay, port = _relay(tmp_path, live, live.key, listener_process=listener_process)
    await relay.start()
    try:
        assert await asyncio.to_thread(served_fingerprint, port, live.cafile) == \
            live.old.fingerprint
        live.install_mismatched()
        with caplog.at_level(logging.ERROR, logger="mailflow.app"):
            await relay.reload_tls()
        assert "TLS certificate not reloaded, the old one stays" in caplog.text
        assert await asyncio.to_thread(served_fingerprint, port, live.cafile) == \
            live.old.fingerprint
        live.new.install(live.cert, live.key)
        await relay.reload_tls()
        assert await asyncio.to_thread(served_fingerprint, port, live.cafile) == \
            live.new.fingerprint
    finally:
        await relay.stop()


async def test_a_failed_handshake_is_one_line_not_a_traceback(
        live: Certs, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Scanners on a public port fail handshakes all day: no ERROR, no traceback."""
    relay, port = _relay(tmp_path, live, live.key, listener_process=False)
    await relay.start()

    def distrustful_client() -> None:
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test",
                          timeout=10) as client, pytest.raises(ssl.SSLCertVerificationError):
            client.starttls(context=ssl.create_default_context())  # the system's CAs only

    try:
        with caplog.at_level(logging.INFO):
            await asyncio.to_thread(distrustful_client)
            deadline = time.monotonic() + 5
            while "TLS handshake failed" not in caplog.text:  # the server's side of it
                assert time.monotonic() < deadline, caplog.text
                await asyncio.sleep(0.01)
    finally:
        await relay.stop()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


# -- a relay as in production ----------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_relay(tmp_path_factory: pytest.TempPathFactory, module_sink: SmtpSink
              ) -> Iterator[tuple[RelayProcess, Certs]]:
    """``mailflow serve`` with STARTTLS required on SMTP (and LMTP, which has none), on
    its own copy of the certificate files, sending to the sink."""
    folder = tmp_path_factory.mktemp("tls-relay")
    certs = Certs(folder / "certs")
    relay = RelayProcess(folder / "relay", lmtp=True, settings={
        "MAILFLOW_EGRESS": "smtp", "MAILFLOW_SMTP_RELAY": module_sink.url,
        "MAILFLOW_TLS_CERT_FILE": str(certs.cert), "MAILFLOW_TLS_KEY_FILE": str(certs.key),
        "MAILFLOW_SMTP_REQUIRE_TLS": "true"})
    relay.init()
    with relay:
        yield relay, certs


def test_mail_before_starttls_is_refused_and_after_it_arrives(
        tls_relay: tuple[RelayProcess, Certs], module_sink: SmtpSink) -> None:
    relay, certs = tls_relay
    address, members = relay.fresh_list(members=2)
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, local_hostname="client.test",
                      timeout=10) as client:
        client.ehlo()
        assert client.has_extn("starttls") and not client.has_extn("auth")
        assert client.mail("poster@outside.test") == (
            530, b"5.7.0 Must issue a STARTTLS command first")
        assert client.rcpt(address)[0] == 530
        client.starttls(context=ssl.create_default_context(cafile=str(certs.cafile)))
        client.ehlo()
        assert not client.has_extn("starttls") and not client.has_extn("auth")
        assert client.docmd("AUTH", "PLAIN AGFAYg==")[0] == 502  # no AUTH: MTAs only
        assert client.sendmail("poster@outside.test", [address], make_message(address)) == {}
    copies = module_sink.wait_for_copies(members, timeout=10)
    assert len(copies) == 1
    assert b"with ESMTPS" in copies[0].content  # RFC 3848: the Received field says TLS


def test_lmtp_offers_no_starttls_and_needs_none(tls_relay: tuple[RelayProcess, Certs]) -> None:
    relay, _ = tls_relay
    assert relay.lmtp_port is not None
    with smtplib.LMTP("127.0.0.1", relay.lmtp_port, local_hostname="client.test") as client:
        client.ehlo()
        assert not client.has_extn("starttls")
        assert client.mail("poster@outside.test")[0] == 250


def test_sighup_reloads_the_certificate(tls_relay: tuple[RelayProcess, Certs]) -> None:
    relay, certs = tls_relay
    assert relay.process is not None
    assert served_fingerprint(relay.smtp_port, certs.cafile) == certs.old.fingerprint
    certs.new.install(certs.cert, certs.key)
    relay.process.send_signal(signal.SIGHUP)
    # Logged once the child serves it (the child answers the reload after the swap).
    reloaded = f"TLS certificate reloaded from {certs.cert} (SHA-256 {certs.new.fingerprint})"
    deadline = time.monotonic() + 10
    while reloaded not in relay.log():
        assert time.monotonic() < deadline, f"no reload logged\n{relay.log()[-3000:]}"
        assert relay.process.poll() is None, f"SIGHUP stopped the relay\n{relay.log()[-3000:]}"
        time.sleep(0.02)
    assert served_fingerprint(relay.smtp_port, certs.cafile) == certs.new.fingerprint

