"""Settings: one typed object read once from ``mailflow.toml`` and ``MAILFLOW_*`` variables.

Nothing else in the package reads the environment; components receive the pieces of
``Settings`` they need.  Precedence, highest first: keyword overrides passed to
:func:`load_settings` (tests), environment variables, the TOML file, the defaults
below.  Every field is documented in ``docs/configuration.md``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import ByteSize, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from mailflow import addresses
from mailflow.errors import ConfigurationError, InvalidInput
from mailflow.memory import DEFAULT_CACHE_MEMORY, CacheBudget
from mailflow.model import AuthorField
from mailflow.smtp_relay import SmtpRelay, parse_smtp_relay

CONFIG_ENV = "MAILFLOW_CONFIG"
DEFAULT_CONFIG_FILE = "mailflow.toml"


# Where SNS serves its signing certificates (``SigningCertURL``): the whole URL must match.
SNS_CERT_URL_PATTERN = r"https://sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/[^?#]+\.pem"
_TOPIC_ARN = re.compile(r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?$")


def split_list(value: Any) -> Any:
    """A comma-separated environment value as a tuple of its non-empty entries; TOML
    may give a list."""
    if isinstance(value, str):
        value = value.split(",")
    if isinstance(value, list | tuple):
        return tuple(str(entry).strip() for entry in value if str(entry).strip())
    return value


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """A host and port to bind a listener to."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(value: str) -> ListenAddress | None:
    """Parse ``host:port`` or ``[v6]:port``; ``off``/empty disables the listener."""
    text = value.strip()
    if text.lower() in {"", "off", "none", "false", "no"}:
        return None
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port (or [ipv6]:port, or 'off'), got {value!r}")
    return ListenAddress(host, int(port))


def parse_proxy(value: str) -> str:
    """An IP address or network (``10.0.0.0/8``, ``fd00::/8``), in canonical form."""
    text = value.strip()
    try:
        if "/" in text:
            return str(ipaddress.ip_network(text, strict=False))
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"expected IP addresses or networks (10.0.0.1, 10.0.0.0/8, "
                         f"fd00::/8), got {value.strip()!r}") from None


LMTP_PORT = 24
EGRESS_NAMES = ("stdout", "smtp", "ses")  # names ``egress`` takes besides provider URLs
_PROVIDER_URLS = "stdout:, smtp://, smtps://, lmtp:// or ses:"
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True, slots=True)
class ProviderUrl:
    """An egress provider as named by its URL: the scheme and, for SMTP/LMTP, the next hop."""

    scheme: str  # "stdout", "smtp" (smtp:// and smtps://), "lmtp" or "ses" (Amazon SES)
    relay: SmtpRelay | None = None

    @property
    def display(self) -> str:
        """For logs and messages: the scheme and next hop, never a password."""
        if self.relay is None:
            return f"{self.scheme}:"
        scheme = "smtps" if self.scheme == "smtp" and self.relay.tls == "implicit" \
            else self.scheme
        return f"{scheme}://{self.relay.host}:{self.relay.port}"


def parse_provider_url(url: str) -> ProviderUrl:
    """Parse an egress URL: ``stdout:``, ``smtp://…``, ``smtps://…``, ``lmtp://host:port``
    or ``ses:``.

    SMTP URLs are :func:`parse_smtp_relay`'s.  ``lmtp://`` takes the same options, with
    port 24 by default and no implicit TLS.  ``ses:`` (Amazon SES) names no host: the
    standard AWS configuration (``AWS_REGION``, ``AWS_ENDPOINT_URL``, the credentials
    chain) says where and as whom, the ``ses_*`` settings how.
    """
    scheme = url.partition(":")[0]
    if scheme == "stdout" and url in ("stdout:", "stdout://"):
        return ProviderUrl("stdout")
    if scheme in ("smtp", "smtps"):
        return ProviderUrl("smtp", parse_smtp_relay(url))
    if scheme == "ses" and url in ("ses:", "ses://"):
        return ProviderUrl("ses")
    if scheme == "lmtp":
        try:
            relay = parse_smtp_relay("smtp" + url[len("lmtp"):])
        except ValueError as exc:
            raise ValueError(str(exc).replace("smtp", "lmtp")) from None
        if relay.tls == "implicit":
            raise ValueError(f"lmtp:// takes tls=starttls or tls=none, got {url!r}")
        # parse_smtp_relay checked the port, so reading it here cannot raise
        if urlsplit(url).port is None:
            relay = replace(relay, port=LMTP_PORT)
        return ProviderUrl("lmtp", relay)
    raise ValueError(f"expected an egress URL ({_PROVIDER_URLS}), got {url!r}")


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """One configured route: a domain (``*.example`` for its subdomains) and a provider URL."""

    domain: str
    url: str

    def __repr__(self) -> str:  # the URL may hold a password
        return f"RouteSpec({self.domain} -> {parse_provider_url(self.url).display})"


def parse_routes(value: str | dict[str, str]) -> tuple[RouteSpec, ...]:
    """Parse ``domain=URL,*.domain=URL`` (the environment) or a ``[routes]`` table.

    Every problem raises ValueError naming the entry; a domain given twice is one.
    """
    if isinstance(value, str):
        pairs: list[tuple[str, str]] = []
        for entry in (e.strip() for e in value.split(",")):
            if not entry:
                continue
            domain, sep, url = entry.partition("=")
            if not sep:
                raise ValueError(f"route {entry!r}: expected domain=URL")
            pairs.append((domain, url))
    else:
        pairs = list(value.items())
    specs: dict[str, RouteSpec] = {}
    for raw_domain, raw_url in pairs:
        domain, url = raw_domain.strip().lower(), raw_url.strip()
        bare = domain.removeprefix("*.")
        if not bare or not all(_LABEL.match(label) for label in bare.split(".")):
            raise ValueError(f"route {raw_domain!r}: expected a domain or *.domain")
        if domain in specs:
            raise ValueError(f"route {raw_domain!r}: the domain is given twice")
        try:
            parse_provider_url(url)
        except ValueError as exc:
            raise ValueError(f"route {raw_domain!r}: {exc}") from None
        specs[domain] = RouteSpec(domain, url)
    return tuple(specs.values())


def nameserver_addresses(spec: str) -> list[tuple[str, int]]:
    """``ip[:port],…`` (IPv6 bare or as ``[::1]:53``) as (address, port) pairs.

    Raises ValueError naming the item that is not an IP address with an optional port.
    """
    found = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        host, port = item, "53"
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port = rest.removeprefix(":") if rest else "53"
        elif item.count(":") == 1:
            host, port = item.split(":")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address with an optional port") from None
        if not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"{item!r} has no valid port")
        found.append((host, int(port)))
    return found


class Settings(BaseSettings):
    """Every knob of a MailFlow Relay instance."""

    model_config = SettingsConfigDict(
        env_prefix="MAILFLOW_", extra="forbid", validate_default=True, frozen=True
    )

    data_dir: Path = Path("./var")
    database_url: str = ""
    smtp_listen: str = "127.0.0.1:2525"
    lmtp_listen: str = "off"
    http_listen: str = "127.0.0.1:8025"
    policy_listen: str = "off"
    ingress_psk: SecretStr = SecretStr("")
    http_auth_max_failures: int = Field(default=10, ge=1)
    http_auth_window: float = Field(default=60.0, gt=0)
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    smtp_require_tls: bool = False
    http_request_timeout: float = Field(default=60.0, gt=0)
    http_max_connections: int = Field(default=1000, ge=1)
    # Who reads /metrics and /v1/queue: loopback clients without a token (else an API
    # token), only with a token, or anyone (docs/configuration.md).
    monitoring_access: Literal["loopback", "token", "open"] = "loopback"
    forwarded_allow_ips: Annotated[tuple[str, ...], NoDecode] = ()
    # How long a web UI login lasts, in seconds (docs/ui.md).
    ui_session_lifetime: float = Field(default=12 * 3600.0, ge=60, le=30 * 86400)
    hostname: str = Field(default_factory=socket.getfqdn)
    postmaster_address: str = ""
    abuse_address: str = ""
    instance_id: str = ""
    # SRS for alias forwards (docs/rules.md): empty = the secret `mailflow init` made.
    srs_secret: SecretStr = SecretStr("")
    srs_old_secrets: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    srs_max_age_days: int = Field(default=21, ge=1, le=1000)
    # List headers (docs/lists.md): the relay's public base URL, for the List-* URLs and
    # RFC 8058 one-click unsubscribe links ('' = mailto only); the links' HMAC secret
    # ('' = the one `mailflow init` made).
    public_url: str = ""
    unsubscribe_secret: SecretStr = SecretStr("")
    # Subscriptions by mail and on the list pages (docs/lists.md): how long a
    # confirmation token is valid, and how many answers to list commands one address
    # gets a day at most.
    subscription_confirm_days: float = Field(default=3.0, gt=0, le=60)
    list_command_replies_per_day: int = Field(default=10, ge=1, le=1000)
    # Subscribe forms posted per client (an IPv4 address, an IPv6 /64) and hour.
    subscribe_posts_per_hour: int = Field(default=10, ge=1, le=10_000)
    # Failure notices (DSNs) for alias forwards: at most this many per sender per hour.
    dsn_per_sender_per_hour: int = Field(default=10, ge=0)
    # DNS for DMARC lookups (docs/lists.md): empty = the system's resolvers.
    dns_resolver: str = ""
    dns_timeout: float = Field(default=2.0, gt=0, le=30)
    dmarc_author_field: AuthorField = AuthorField.REPLY_TO
    # Bounce processing (docs/lists.md): warnings to a member disabled for bouncing,
    # seconds between them (and before the removal), seconds without a bounce that
    # reset a score.
    bounce_warnings: int = Field(default=3, ge=0, le=100)
    bounce_warning_interval: float = Field(default=7 * 86400.0, gt=0)
    bounce_score_reset: float = Field(default=7 * 86400.0, gt=0)
    egress: str = "stdout"
    routes: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    smtp_relay: str = "smtp://127.0.0.1:25"
    smtp_pool_size: int = Field(default=8, ge=1, le=256)
    smtp_timeout: float = Field(default=60.0, gt=0)
    smtp_transaction_timeout: float = Field(default=600.0, gt=0)
    smtp_idle_check: float = Field(default=10.0, ge=0)
    egress_process: bool = True
    # Amazon SES egress (docs/aws.md "Sending"): 0 = the account's rate from GetAccount.
    ses_configuration_set: str = ""
    ses_max_send_rate: float = Field(default=0.0, ge=0)
    ses_timeout: float = Field(default=30.0, gt=0)
    ses_concurrency: int = Field(default=8, ge=1, le=64)
    ses_feedback_forwarding: bool = True
    listener_process: bool = True
    max_message_size: int = Field(default=25 * 1024 * 1024, ge=1024)
    # SMTP/LMTP ingress sessions (issue 10 item 7): bounds an attacker on the network hits.
    smtp_max_connections: int = Field(default=1000, ge=1)
    smtp_max_connections_per_client: int = Field(default=50, ge=1)
    smtp_idle_timeout: float = Field(default=300.0, gt=0)
    smtp_data_timeout: float = Field(default=600.0, gt=0)
    smtp_max_commands: int = Field(default=10_000, ge=1)
    smtp_max_failed_recipients: int = Field(default=20, ge=1)
    cache_memory: ByteSize = Field(default=ByteSize(DEFAULT_CACHE_MEMORY), ge=0)
    max_received_headers: int = Field(default=30, ge=1)
    recipient_cache_ttl: float = Field(default=2.0, ge=0)
    filter_regex_timeout: float = Field(default=0.5, gt=0, le=60)
    max_recipients_per_transaction: int = Field(default=50, ge=1, le=1000)
    retry_initial_delay: float = Field(default=60.0, gt=0)
    retry_multiplier: float = Field(default=2.0, ge=1)
    retry_max_delay: float = Field(default=4 * 3600.0, gt=0)
    max_delivery_age: float = Field(default=5 * 24 * 3600.0, gt=0)
    delivery_lease: float = Field(default=300.0, gt=0)
    scheduler_batch_size: int = Field(default=1000, ge=1)
    max_inline_deliveries: int = Field(default=1000, ge=0)
    max_body_in_database: int = Field(default=64 * 1024, ge=0)
    # Bodies too large for the database: files under data_dir/blobs, or s3://bucket/prefix.
    blob_url: str = ""
    blob_retention: float = Field(default=3600.0, ge=0)
    message_retention: float = Field(default=7 * 24 * 3600.0, ge=0)
    maintenance_interval: float = Field(default=30.0, gt=0)
    moderation_interval: float = Field(default=10.0, gt=0)
    poll_interval: float = Field(default=1.0, gt=0)
    # Scale-out (docs/scaling.md): what this process runs; whether a blob folder (no
    # blob_url) is shared by every node (NFS); the look for work while PostgreSQL's
    # LISTEN/NOTIFY works (poll_interval is the look without it).
    role: Literal["all", "ingress", "worker", "web"] = "all"
    shared_blobs: bool = False
    notify_poll_interval: float = Field(default=10.0, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Amazon SES ingress (docs/aws.md): SNS webhook, SQS polling, S3 fetch and audit.
    sns_topics: Annotated[tuple[str, ...], NoDecode] = ()
    sns_cert_url_pattern: str = SNS_CERT_URL_PATTERN
    sqs_queues: Annotated[tuple[str, ...], NoDecode] = ()
    sqs_wait_time: int = Field(default=20, ge=0, le=20)
    sqs_visibility_timeout: int = Field(default=120, ge=10, le=43200)
    s3_fetch_attempts: int = Field(default=4, ge=1, le=20)
    s3_fetch_delay: float = Field(default=0.5, gt=0, le=60)
    aws_timeout: float = Field(default=10.0, gt=0, le=300)
    ses_refuse_virus: bool = True
    s3_audit: bool = False
    s3_audit_delete_blocked: bool = False
    log_format: Literal["text", "json"] = "text"

    @field_validator("smtp_listen", "lmtp_listen", "http_listen", "policy_listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator("smtp_relay")
    @classmethod
    def _check_relay(cls, value: str) -> str:
        parse_smtp_relay(value)
        return value

    @field_validator("egress")
    @classmethod
    def _check_egress(cls, value: str) -> str:
        if value not in EGRESS_NAMES:
            if ":" not in value:
                raise ValueError(f"expected stdout, smtp, ses or an egress URL "
                                 f"({_PROVIDER_URLS}), "
                                 f"got {value!r}")
            parse_provider_url(value)
        return value

    @field_validator("routes", mode="before")
    @classmethod
    def _parse_routes(cls, value: Any) -> Any:
        """``MAILFLOW_ROUTES`` is ``domain=URL,…``; the TOML ``[routes]`` table is a dict."""
        if isinstance(value, str | dict):
            return {spec.domain: spec.url for spec in parse_routes(value)}
        return value

    @field_validator("forwarded_allow_ips", mode="before")
    @classmethod
    def _parse_proxies(cls, value: Any) -> Any:
        """``MAILFLOW_FORWARDED_ALLOW_IPS`` is ``addr,net/len,…``; TOML may give a list.

        Each entry is checked and written in one canonical form here: uvicorn silently
        treats what it cannot parse as a name no peer ever has.
        """
        value = split_list(value)
        return tuple(map(parse_proxy, value)) if isinstance(value, tuple) else value

    @field_validator("dns_resolver")
    @classmethod
    def _check_dns_resolver(cls, value: str) -> str:
        nameserver_addresses(value)
        return value

    @field_validator("blob_url")
    @classmethod
    def _check_blob_url(cls, value: str) -> str:
        if value:
            from mailflow.s3_blobs import parse_blob_url

            parse_blob_url(value)
        return value

    @field_validator("sns_topics", mode="before")
    @classmethod
    def _parse_topics(cls, value: Any) -> Any:
        """``MAILFLOW_SNS_TOPICS`` is ``arn,arn,…``: each a whole SNS topic ARN."""
        value = split_list(value)
        if isinstance(value, tuple):
            for arn in value:
                if not _TOPIC_ARN.match(arn):
                    raise ValueError(f"expected SNS topic ARNs "
                                     f"(arn:aws:sns:REGION:ACCOUNT:NAME), got {arn!r}")
        return value

    @field_validator("sqs_queues", mode="before")
    @classmethod
    def _parse_queues(cls, value: Any) -> Any:
        """``MAILFLOW_SQS_QUEUES`` is ``url,url,…``: each an SQS queue URL."""
        value = split_list(value)
        if isinstance(value, tuple):
            for url in value:
                parts = urlsplit(url)
                if parts.scheme not in ("https", "http") or not parts.netloc \
                        or parts.path.count("/") != 2:
                    raise ValueError(f"expected SQS queue URLs "
                                     f"(https://sqs.REGION.amazonaws.com/ACCOUNT/NAME), "
                                     f"got {url!r}")
        return value

    @field_validator("sns_cert_url_pattern")
    @classmethod
    def _check_cert_pattern(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return value

    @field_validator("postmaster_address", "abuse_address")
    @classmethod
    def _check_role_address(cls, value: str) -> str:
        if not value.strip():
            return ""
        try:
            return addresses.validated(value)
        except InvalidInput as exc:
            raise ValueError(str(exc)) from None

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str) -> str:
        """An http(s) base URL, kept without its final slash (paths are appended)."""
        value = value.strip().rstrip("/")
        if not value:
            return ""
        scheme, _, rest = value.partition("://")
        if scheme.lower() not in ("http", "https") or not rest or any(
                c.isspace() or c in "<>\"" or not c.isprintable() for c in rest):
            raise ValueError("expected the relay's public base URL, such as "
                             "https://lists.example.org (it goes into List-* header fields)")
        return value

    @field_validator("srs_old_secrets", mode="before")
    @classmethod
    def _parse_old_secrets(cls, value: Any) -> Any:
        """``MAILFLOW_SRS_OLD_SECRETS`` is ``secret,secret,…``; TOML may give a list."""
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list | tuple):
            return tuple(str(v).strip() if not isinstance(v, SecretStr) else v
                         for v in value if str(v).strip())
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if value and not value.startswith(("sqlite", "postgresql", "postgres://")):
            raise ValueError("expected sqlite:///path or postgresql://user@host:port/db")
        return value

    @field_validator("tls_cert_file", "tls_key_file", mode="before")
    @classmethod
    def _empty_path_is_none(cls, value: Any) -> Any:
        """``MAILFLOW_TLS_CERT_FILE=`` turns STARTTLS off, as leaving it out does."""
        return None if value == "" else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_retry(self) -> Settings:
        if self.retry_max_delay < self.retry_initial_delay:
            raise ValueError("retry_max_delay must be >= retry_initial_delay")
        return self

    @model_validator(mode="after")
    def _check_role(self) -> Settings:
        """Split roles are processes that share a queue: one PostgreSQL, one blob store."""
        if self.role == "all":
            return self
        if self.resolved_database_url.startswith("sqlite"):
            raise ValueError(f"role {self.role} runs beside other relay processes, which "
                             "share one queue: that needs PostgreSQL (database_url = "
                             "postgresql://…); on SQLite run one process with role all")
        if not self.blob_url and not self.shared_blobs:
            raise ValueError(f"role {self.role} needs a blob store every node reaches: set "
                             "blob_url = s3://BUCKET[/PREFIX], or shared_blobs = true if "
                             f"{self.blob_dir} is one folder shared by every node (NFS)")
        return self

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            given, missing = (("tls_cert_file", "tls_key_file") if self.tls_key_file is None
                              else ("tls_key_file", "tls_cert_file"))
            raise ValueError(f"{given} is set but {missing} is not: STARTTLS needs both "
                             "(PEM files), or neither")
        if self.smtp_require_tls and self.tls_cert_file is None:
            raise ValueError("smtp_require_tls needs tls_cert_file and tls_key_file "
                             "(STARTTLS is off without them)")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    # Derived views, parsed once the raw strings are known to be valid.
    @property
    def smtp_address(self) -> ListenAddress | None:
        return parse_listen(self.smtp_listen)

    @property
    def lmtp_address(self) -> ListenAddress | None:
        return parse_listen(self.lmtp_listen)

    @property
    def http_address(self) -> ListenAddress | None:
        return parse_listen(self.http_listen)

    @property
    def policy_address(self) -> ListenAddress | None:
        return parse_listen(self.policy_listen)

    @property
    def tls_files(self) -> tuple[Path, Path] | None:
        """(certificate chain, key) for STARTTLS on the SMTP listener, or None."""
        if self.tls_cert_file is None or self.tls_key_file is None:
            return None
        return self.tls_cert_file, self.tls_key_file

    @property
    def ingress_keys(self) -> list[str]:
        """Pre-shared keys for ``POST /v1/email``: several, comma-separated, for rotation."""
        keys = self.ingress_psk.get_secret_value().split(",")
        return [key.strip() for key in keys if key.strip()]

    @property
    def role_addresses(self) -> dict[str, str]:
        """Where the role aliases ``postmaster@`` and ``abuse@`` go: the ones set."""
        wanted = {"postmaster": self.postmaster_address, "abuse": self.abuse_address}
        return {role: target for role, target in wanted.items() if target}

    @property
    def relay(self) -> SmtpRelay:
        return parse_smtp_relay(self.smtp_relay)

    @property
    def egress_url(self) -> str:
        """The default egress as a URL: ``smtp`` means ``smtp_relay``, ``stdout`` ``stdout:``."""
        if self.egress == "smtp":
            return self.smtp_relay
        if self.egress in ("stdout", "ses"):
            return self.egress + ":"
        return self.egress

    @property
    def egress_display(self) -> str:
        """``egress`` for messages: a name as given, a URL without its credentials."""
        if self.egress in EGRESS_NAMES:
            return self.egress
        return parse_provider_url(self.egress).display

    @property
    def route_specs(self) -> tuple[RouteSpec, ...]:
        return parse_routes(self.routes)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'mailflow.db').resolve()}"

    @property
    def takes_mail(self) -> bool:
        """Role ``all`` or ``ingress``: listeners, the accept chain and the processing."""
        return self.role in ("all", "ingress")

    @property
    def sends_mail(self) -> bool:
        """Role ``all`` or ``worker``: the scheduler and the egress."""
        return self.role in ("all", "worker")

    @property
    def serves_web(self) -> bool:
        """Role ``all`` or ``web``: the API, the web UI and unsubscribe links."""
        return self.role in ("all", "web")

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def cache_budget(self) -> CacheBudget:
        """Each cache's share of ``cache_memory``."""
        return CacheBudget(int(self.cache_memory))


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Read settings, raising ConfigurationError with every problem in one message.

    The file is ``config_file``, else ``$MAILFLOW_CONFIG``, else ``./mailflow.toml`` if it
    exists.  A file named explicitly must exist.
    """
    explicit = config_file or os.environ.get(CONFIG_ENV)
    path = Path(explicit) if explicit else Path(DEFAULT_CONFIG_FILE)
    if explicit and not path.is_file():
        raise ConfigurationError(f"configuration file {path} does not exist")
    toml_file = path if path.is_file() else None
    cls: type[Settings] = type("Settings", (Settings,), {
        "model_config": {**Settings.model_config, "toml_file": toml_file}})
    try:
        return cls(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = ".".join(str(part) for part in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            where = f"{name} (MAILFLOW_{name.upper()})" if name else "settings"
            problems.append(f"  {where}: {message}")
        source = f" (file {toml_file})" if toml_file else ""
        raise ConfigurationError("invalid configuration" + source + ":\n" + "\n".join(problems)) \
            from None
    except ValueError as exc:  # TOML syntax errors surface as ValueError subclasses
        raise ConfigurationError(f"cannot read configuration file {path}: {exc}") from None
