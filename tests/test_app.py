"""The relay's start and stop, in-process: what a failed start reports."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from mailflow.app import Relay
from mailflow.config import load_settings
from mailflow.errors import ConfigurationError


@pytest.mark.parametrize("listener_process", [True, False])
async def test_a_port_in_use_is_a_configuration_error(tmp_path: Path,
                                                      listener_process: bool) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        settings = load_settings(None, data_dir=tmp_path, smtp_listen=f"127.0.0.1:{port}",
                                 http_listen="off", egress="stdout",
                                 listener_process=listener_process)
        relay = Relay(settings)
        with pytest.raises(ConfigurationError, match=f"cannot listen for SMTP on 127.0.0.1:{port}"):
            await relay.start()
        assert relay.runner is None and relay.scheduler is None  # everything stopped again


def test_start_up_says_where_role_mail_goes_and_warns_without_a_postmaster(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from mailflow.app import _log_roles

    with caplog.at_level("INFO", logger="mailflow.app"):
        _log_roles(load_settings(None, data_dir=tmp_path, postmaster_address=""))
    [warning] = caplog.records
    assert warning.levelname == "WARNING"
    assert "postmaster_address is not set" in warning.getMessage()
    assert "MAILFLOW_POSTMASTER_ADDRESS" in warning.getMessage()
    caplog.clear()
    with caplog.at_level("INFO", logger="mailflow.app"):
        _log_roles(load_settings(None, data_dir=tmp_path, postmaster_address="ops@x.test"))
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "postmaster@ of every served domain goes to ops@x.test")]
