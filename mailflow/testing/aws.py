"""AWS for tests: moto in server mode on loopback, and SNS messages signed as SNS signs them.

moto serves S3, SQS and SNS, but its SNS signs with a certificate at an amazonaws.com
address no test can reach, and SES receipt rules put nothing in S3.  So tests put the
mail in S3 themselves, and :class:`SnsSigner` signs ``Received`` notifications with a
key of its own whose certificate a loopback HTTP server serves (the relay is told to
take certificates from there through ``sns_cert_url_pattern``).
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import re
import threading
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from moto.server import ThreadedMotoServer

from mailflow.testing.ports import free_port

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's account
CERT_PATH = "/SimpleNotificationService-test.pem"


class MotoServer:
    """``with MotoServer() as moto: ...``: moto's server on 127.0.0.1 and a free port."""

    def __init__(self) -> None:
        self.port = free_port()
        self._server: ThreadedMotoServer | None = None

    def __enter__(self) -> MotoServer:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request else
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port,
                                          verbose=False)
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS variables that point a relay (boto3) at this server."""
        return self.aws_env()

    def aws_env(self, endpoint: str | None = None) -> dict[str, str]:
        """The environment that points boto3 at this server (or at ``endpoint``, a
        proxy in front of it), with credentials that mean nothing outside it and no
        shared AWS files read."""
        return {"AWS_ENDPOINT_URL": endpoint or self.url, "AWS_REGION": REGION,
                "AWS_DEFAULT_REGION": REGION, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
                "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}

    def client(self, service: str) -> Any:
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
        """Every raw message SES took: ``id``, ``source``, ``destinations``, ``raw_data``
        (moto 5.2 lists them at ``/moto-api/data.json``; it does not implement
        ``GetAccount``, and refuses a send from an unverified identity)."""
        sends: list[dict[str, Any]] = self.data().get("ses", {}).get("RawMessage", [])
        return sends

    def reset(self) -> None:
        """Forget everything (sends, identities): each test starts from nothing."""
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass


def topic_arn(name: str) -> str:
    return f"arn:aws:sns:{REGION}:{ACCOUNT}:{name}"


def received_notification(ses_message_id: str, source: str, recipients: Sequence[str], *,
                          bucket: str = "", key: str = "", content: bytes | None = None,
                          topic: str = "", virus: str = "PASS") -> dict[str, Any]:
    """A ``Received`` notification shaped like AWS's documented example: an S3 action
    (``bucket``/``key``) or an SNS action with ``content`` inline (base64)."""
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
    action: dict[str, Any]
    if content is None:
        action = {"type": "S3", "topicArn": topic, "bucketName": bucket, "objectKey": key}
    else:
        action = {"type": "SNS", "topicArn": topic, "encoding": "BASE64"}
    notification: dict[str, Any] = {
        "notificationType": "Received",
        "mail": {"timestamp": now, "source": source, "messageId": ses_message_id,
                 "destination": list(recipients), "headersTruncated": False, "headers": [],
                 "commonHeaders": {"returnPath": source, "from": [source]}},
        "receipt": {"timestamp": now, "processingTimeMillis": 222,
                    "recipients": list(recipients), "spamVerdict": {"status": "PASS"},
                    "virusVerdict": {"status": virus}, "spfVerdict": {"status": "PASS"},
                    "dkimVerdict": {"status": "PASS"}, "dmarcVerdict": {"status": "GRAY"},
                    "action": action},
    }
    if content is not None:
        notification["content"] = base64.b64encode(content).decode()
    return notification


class _CertHandler(BaseHTTPRequestHandler):
    server: _CertServer

    def do_GET(self) -> None:
        owner = self.server.owner
        with owner.lock:
            owner.requests.append(self.path)
        if self.path == CERT_PATH:
            body = owner.cert_pem
        elif self.path.startswith("/confirm?"):
            body = b"<ConfirmSubscriptionResponse/>"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


class _CertServer(ThreadingHTTPServer):
    owner: SnsSigner


class SnsSigner:
    """Signs SNS messages with a test key; serves its certificate (and answers
    subscription confirmations) on loopback, recording every request."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .sign(self.key, hashes.SHA256()))
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        self.lock = threading.Lock()
        self.requests: list[str] = []
        self._server = _CertServer(("127.0.0.1", 0), _CertHandler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> SnsSigner:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def cert_url(self) -> str:
        return self.base_url + CERT_PATH

    @property
    def cert_url_pattern(self) -> str:
        """``sns_cert_url_pattern`` for a relay that takes this server's certificates."""
        return re.escape(self.base_url) + r"/[^?#]+\.pem"

    def seen(self, prefix: str) -> list[str]:
        with self.lock:
            return [path for path in self.requests if path.startswith(prefix)]

    def notification(self, topic: str, message: Mapping[str, Any] | str, *,
                     age: float = 0.0, version: str = "2", cert_url: str | None = None,
                     subject: str | None = None) -> dict[str, Any]:
        """A signed SNS ``Notification`` of ``message`` (a dict is sent as JSON),
        ``age`` seconds old."""
        fields = {"Type": "Notification", "MessageId": str(uuid.uuid4()), "TopicArn": topic,
                  "Message": message if isinstance(message, str) else json.dumps(message),
                  "Timestamp": _timestamp(age)}
        if subject is not None:
            fields["Subject"] = subject
        return self.sign(fields, version, cert_url)

    def subscription_confirmation(self, topic: str, token: str) -> dict[str, Any]:
        fields = {"Type": "SubscriptionConfirmation", "MessageId": str(uuid.uuid4()),
                  "Token": token, "TopicArn": topic,
                  "Message": f"You have chosen to subscribe to the topic {topic}.",
                  "SubscribeURL": f"{self.base_url}/confirm?Action=ConfirmSubscription"
                                  f"&TopicArn={topic}&Token={token}",
                  "Timestamp": _timestamp(0.0)}
        return self.sign(fields)

    def sign(self, fields: dict[str, str], version: str = "2", cert_url: str | None = None
             ) -> dict[str, Any]:
        """``fields`` with SignatureVersion, Signature and SigningCertURL, signed over
        the documented fields of its type."""
        # AWS's documented order (written out here, not taken from the code under test).
        order = (["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
                 if fields["Type"] == "Notification" else
                 ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn",
                  "Type"])
        text = "".join(f"{name}\n{fields[name]}\n" for name in order if name in fields)
        algorithm = hashes.SHA256() if version == "2" else hashes.SHA1()
        signature = self.key.sign(text.encode(), padding.PKCS1v15(), algorithm)
        return {**fields, "SignatureVersion": version,
                "Signature": base64.b64encode(signature).decode(),
                "SigningCertURL": cert_url or self.cert_url}


def _timestamp(age: float) -> str:
    moment = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=age)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
