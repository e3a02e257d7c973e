"""moto in server mode on loopback, as Amazon SES (and any other AWS API) for tests.

A real HTTP server on a free port of 127.0.0.1, in a thread of the test's process; the
relay under test, in its own process, reaches it through the standard AWS settings
(:meth:`MotoServer.aws_env`: ``AWS_ENDPOINT_URL``, a region and dummy credentials), as
it would reach AWS.  What moto 5.2 does with SES: raw sends are kept and listed at
``/moto-api/data.json`` (``ses.RawMessage``); ``GetAccount`` is not implemented (404);
a send from an unverified identity is refused with ``MessageRejected``.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from typing import Any

from moto.server import ThreadedMotoServer

from mailflow.testing.ports import free_port

REGION = "us-east-1"


class MotoServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port,
                                          verbose=False)

    def __enter__(self) -> MotoServer:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    def aws_env(self, endpoint: str | None = None) -> dict[str, str]:
        """The environment that points boto3 at this server (or at ``endpoint``, a
        proxy in front of it), with credentials that mean nothing outside it."""
        return {"AWS_ENDPOINT_URL": endpoint or self.url, "AWS_REGION": REGION,
                "AWS_DEFAULT_REGION": REGION, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
                "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(service, endpoint_url=self.url, region_name=REGION,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def verify(self, *identities: str) -> None:
        """Make domains or addresses verified SES identities (moto verifies at once)."""
        client = self.client("sesv2")
        for identity in identities:
            client.create_email_identity(EmailIdentity=identity)

    def data(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/moto-api/data.json", timeout=10) as reply:
            result: dict[str, Any] = json.load(reply)
        return result

    def raw_sends(self) -> list[dict[str, Any]]:
        """Every raw message SES took: ``id``, ``source``, ``destinations``, ``raw_data``."""
        sends: list[dict[str, Any]] = self.data().get("ses", {}).get("RawMessage", [])
        return sends

    def reset(self) -> None:
        """Forget everything (sends, identities): each test starts from nothing."""
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass
