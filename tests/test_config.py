"""Settings: defaults, environment, TOML file, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailflow.config import (
    ListenAddress,
    RouteSpec,
    load_settings,
    parse_listen,
    parse_provider_url,
    parse_smtp_relay,
)
from mailflow.errors import ConfigurationError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("MAILFLOW_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults_are_the_documented_ones() -> None:
    settings = load_settings()
    assert settings.smtp_address == ListenAddress("127.0.0.1", 2525)
    assert settings.http_address == ListenAddress("127.0.0.1", 8025)
    assert settings.lmtp_address is None
    assert settings.egress == "stdout"
    assert settings.data_dir == Path("var")
    assert settings.resolved_database_url.endswith("/var/mailflow.db")


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "mailflow.toml"
    config.write_text('egress = "smtp"\nsmtp_listen = "127.0.0.1:2600"\n'
                      'max_message_size = 10000\n')
    monkeypatch.setenv("MAILFLOW_SMTP_LISTEN", "[::1]:2700")
    settings = load_settings()  # ./mailflow.toml is read when present
    assert settings.egress == "smtp"
    assert settings.max_message_size == 10000
    assert settings.smtp_address == ListenAddress("::1", 2700)
    monkeypatch.setenv("MAILFLOW_CONFIG", str(config))
    assert load_settings().egress == "smtp"


def test_every_problem_is_reported_with_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILFLOW_EGRESS", "fax")
    monkeypatch.setenv("MAILFLOW_MAX_MESSAGE_SIZE", "lots")
    with pytest.raises(ConfigurationError) as error:
        load_settings()
    assert "MAILFLOW_EGRESS" in str(error.value)
    assert "MAILFLOW_MAX_MESSAGE_SIZE" in str(error.value)


def test_unknown_keys_and_bad_toml_are_errors(tmp_path: Path) -> None:
    config = tmp_path / "typo.toml"
    config.write_text('egres = "smtp"\n')
    with pytest.raises(ConfigurationError, match="egres"):
        load_settings(config)
    config.write_text("egress = \n")
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_settings(config)


@pytest.mark.parametrize(("url", "host", "port", "tls", "user"), [
    ("smtp://127.0.0.1:2526", "127.0.0.1", 2526, "none", None),
    ("smtp://u%40x:p%3Aw@mail.test:587?tls=starttls", "mail.test", 587, "starttls", "u@x"),
    ("smtps://mail.test", "mail.test", 465, "implicit", None),
])
def test_relay_urls(url: str, host: str, port: int, tls: str, user: str | None) -> None:
    relay = parse_smtp_relay(url)
    assert (relay.host, relay.port, relay.tls, relay.username) == (host, port, tls, user)
    assert "p:w" not in repr(relay)


@pytest.mark.parametrize("bad", ["http://x", "smtp://x?tls=maybe", "smtp://x?color=red",
                                 "smtp://x:99999"])
def test_bad_relay_urls(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_smtp_relay(bad)


@pytest.mark.parametrize("bad", ["2525", "host:", ":25", "host:port", "host:70000"])
def test_bad_listen_addresses(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(bad)


def test_egress_names_keep_their_meaning_and_urls_are_equivalent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILFLOW_SMTP_RELAY", "smtp://mail.test:2526")
    assert load_settings().egress_url == "stdout:"
    monkeypatch.setenv("MAILFLOW_EGRESS", "smtp")
    assert load_settings().egress_url == "smtp://mail.test:2526"
    monkeypatch.setenv("MAILFLOW_EGRESS", "lmtp://mailbox.test")
    settings = load_settings()
    assert settings.egress == settings.egress_url == "lmtp://mailbox.test"
    relay = parse_provider_url(settings.egress_url).relay
    assert relay is not None and (relay.host, relay.port) == ("mailbox.test", 24)


def test_the_egress_is_shown_without_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """``mailflow serve`` prints ``egress_display`` on start: never a password."""
    assert load_settings().egress_display == "stdout"
    monkeypatch.setenv("MAILFLOW_EGRESS", "smtps://relay-user:s3cret@mail.test:465")
    shown = load_settings().egress_display
    assert shown == "smtps://mail.test:465" and "s3cret" not in shown


@pytest.mark.parametrize("bad", ["SES", "ses:eu-west-1", "SMTP", "lmtp://", "lmtp://x?tls=implicit",
                                 "ftp://x", "stdout:foo"])
def test_bad_egress_values(bad: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILFLOW_EGRESS", bad)
    with pytest.raises(ConfigurationError, match="MAILFLOW_EGRESS"):
        load_settings()


def test_routes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILFLOW_ROUTES", "internal.example=lmtp://127.0.0.1:24, "
                                          "*.Corp.Example=smtp://10.0.0.5:2525?tls=none,")
    assert load_settings().route_specs == (
        RouteSpec("internal.example", "lmtp://127.0.0.1:24"),
        RouteSpec("*.corp.example", "smtp://10.0.0.5:2525?tls=none"))


def test_routes_from_a_toml_table(tmp_path: Path) -> None:
    config = tmp_path / "mailflow.toml"
    config.write_text('[routes]\n"internal.example" = "lmtp://127.0.0.1:24"\n'
                      '"*.corp.example" = "smtp://u:p@10.0.0.5:2525"\n')
    specs = load_settings(config).route_specs
    assert [spec.domain for spec in specs] == ["internal.example", "*.corp.example"]
    assert "u:p" not in repr(specs)


@pytest.mark.parametrize(("bad", "problem"), [
    ("internal.example", "route 'internal.example': expected domain=URL"),
    ("a.example=ftp://x", "route 'a.example': expected an egress URL"),
    ("a.example=lmtp://x:99999", "route 'a.example': invalid port"),
    ("*.=lmtp://x", "route '*.': expected a domain or *.domain"),
    ("a.*.example=lmtp://x", "route 'a.*.example': expected a domain or *.domain"),
    ("a.example=lmtp://x,A.example=stdout:", "route 'A.example': the domain is given twice"),
])
def test_bad_routes_stop_the_relay_with_a_clear_message(
        bad: str, problem: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILFLOW_ROUTES", bad)
    with pytest.raises(ConfigurationError) as error:
        load_settings()
    assert "routes (MAILFLOW_ROUTES): " + problem in str(error.value)


def test_forwarded_allow_ips_default_none_and_canonical(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().forwarded_allow_ips == ()  # no proxy trusted unless configured
    monkeypatch.setenv("MAILFLOW_FORWARDED_ALLOW_IPS", " 127.0.0.1, 10.1.2.3/8,,FD00::1/8")
    assert load_settings().forwarded_allow_ips == ("127.0.0.1", "10.0.0.0/8", "fd00::/8")
    monkeypatch.delenv("MAILFLOW_FORWARDED_ALLOW_IPS")
    config = tmp_path / "mailflow.toml"
    config.write_text('forwarded_allow_ips = ["::1", "192.0.2.0/24"]\n')
    assert load_settings(config).forwarded_allow_ips == ("::1", "192.0.2.0/24")


@pytest.mark.parametrize("bad", ["*", "proxy.example", "10.0.0.0/33", "127.0.0.1:80"])
def test_bad_forwarded_allow_ips_stop_the_relay(bad: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILFLOW_FORWARDED_ALLOW_IPS", f"127.0.0.1,{bad}")
    with pytest.raises(ConfigurationError) as error:
        load_settings()
    assert (f"forwarded_allow_ips (MAILFLOW_FORWARDED_ALLOW_IPS): expected IP addresses or "
            f"networks (10.0.0.1, 10.0.0.0/8, fd00::/8), got {bad!r}") in str(error.value)


def test_role_addresses_are_validated_and_stored_canonical(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    assert load_settings().role_addresses == {}  # unset: postmaster@ is refused (a warning)
    monkeypatch.setenv("MAILFLOW_POSTMASTER_ADDRESS", " Ops@ÜNÏCODE.example ")
    assert load_settings().role_addresses == {"postmaster": "ops@xn--ncode-cta3g.example"}
    monkeypatch.setenv("MAILFLOW_ABUSE_ADDRESS", "abuse-desk@elsewhere.test")
    assert load_settings().role_addresses == {"postmaster": "ops@xn--ncode-cta3g.example",
                                              "abuse": "abuse-desk@elsewhere.test"}
    monkeypatch.setenv("MAILFLOW_POSTMASTER_ADDRESS", "ops")
    with pytest.raises(ConfigurationError,
                       match=r"postmaster_address \(MAILFLOW_POSTMASTER_ADDRESS\): invalid "
                             r"address 'ops'"):
        load_settings()


def test_ses_ingress_lists_from_environment_or_toml(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    topic = "arn:aws:sns:eu-west-1:123456789012:inbound"
    queue = "https://sqs.eu-west-1.amazonaws.com/123456789012/inbound"
    monkeypatch.setenv("MAILFLOW_SNS_TOPICS", f" {topic} , {topic}-2,")
    monkeypatch.setenv("MAILFLOW_SQS_QUEUES", queue)
    settings = load_settings()
    assert settings.sns_topics == (topic, f"{topic}-2")
    assert settings.sqs_queues == (queue,)
    monkeypatch.delenv("MAILFLOW_SNS_TOPICS")
    config = tmp_path / "mailflow.toml"
    config.write_text(f'sns_topics = ["{topic}"]\n')
    assert load_settings(config).sns_topics == (topic,)


@pytest.mark.parametrize(("name", "value"), [
    ("SNS_TOPICS", "inbound"),
    ("SNS_TOPICS", "arn:aws:sqs:eu-west-1:123456789012:inbound"),
    ("SQS_QUEUES", "sqs.eu-west-1.amazonaws.com/123456789012/inbound"),
    ("SQS_QUEUES", "https://sqs.eu-west-1.amazonaws.com/inbound"),
    ("SNS_CERT_URL_PATTERN", "https://sns\\.(unclosed"),
    ("SQS_WAIT_TIME", "21"),
])
def test_bad_ses_ingress_settings(monkeypatch: pytest.MonkeyPatch, name: str,
                                  value: str) -> None:
    monkeypatch.setenv(f"MAILFLOW_{name}", value)
    with pytest.raises(ConfigurationError) as error:
        load_settings()
    assert f"MAILFLOW_{name}" in str(error.value)
