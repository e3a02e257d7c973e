"""moto in server mode on loopback: real AWS API calls over HTTP, nothing leaves the host.

The relay under test is another process: it reaches the server through the standard
AWS configuration (``AWS_ENDPOINT_URL`` and friends, see :meth:`MotoServer.env`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

REGION = "us-east-1"


@dataclass(frozen=True, slots=True)
class MotoServer:
    url: str

    def env(self) -> dict[str, str]:
        """What a relay (or boto3 in this process) needs to use this server."""
        return {"AWS_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": REGION,
                "AWS_DEFAULT_REGION": REGION}

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(service, endpoint_url=self.url, region_name=REGION,
                            aws_access_key_id="testing", aws_secret_access_key="testing")


@contextmanager
def moto_server() -> Iterator[MotoServer]:
    """A moto server on 127.0.0.1 (a port the kernel picked), stopped on exit."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        assert server._server is not None  # start() returns once it listens
        yield MotoServer(f"http://127.0.0.1:{server._server.server_port}")
    finally:
        server.stop()
