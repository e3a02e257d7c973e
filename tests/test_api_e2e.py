"""The API on a running relay over real HTTP, with users and tokens the commands made:
what only a relay process shows (the wiring in ``Relay``, the commands' output)."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx

from mailflow.testing.relay import RelayProcess


def test_commands_make_users_and_tokens_the_relays_api_accepts(
        make_relay: Callable[..., RelayProcess]) -> None:
    relay = make_relay()
    added = relay.cli("user", "add", "Root@Example.test", "--admin", "--password-stdin",
                      input=b"a long enough password\n")
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == "added site admin root@example.test"
    short = relay.cli("user", "add", "x@example.test", input=b"short\n")
    assert short.returncode == 2 and "a password has 10 to" in short.stderr
    made = relay.cli("token", "create", "--user", "root@example.test", "--label", "ci")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("mf_") and "cannot be shown again" in made.stderr
    read = relay.cli("token", "create", "--scope", "read").stdout.strip()  # a site token
    listed = json.loads(relay.cli("token", "ls", "--json").stdout)
    assert [(t["user"], t["scope"], t["label"]) for t in listed] == [
        ("root@example.test", "write", "ci"), (None, "read", "")]
    assert secret not in json.dumps(listed)

    relay.start()
    base = f"http://127.0.0.1:{relay.http_port}"
    with httpx.Client(base_url=base, timeout=10) as http:
        auth = {"Authorization": f"Bearer {secret}"}
        assert http.post("/api/v1/domains", json={"name": "example.test"},
                         headers=auth).status_code == 201
        created = http.post("/api/v1/lists", json={"address": "team@example.test"},
                            headers=auth)
        assert created.status_code == 201, created.text
        refused = http.post("/api/v1/lists", json={"address": "x@example.test"},
                            headers={"Authorization": f"Bearer {read}"})
        assert refused.status_code == 403
        assert refused.headers["content-type"] == "application/problem+json"
        login = http.post("/api/v1/tokens", json={"email": "root@example.test",
                                                  "password": "a long enough password"})
        assert login.status_code == 201
        assert http.get("/metrics").status_code == 200  # loopback: no token needed
        audit = http.get("/api/v1/audit", headers=auth).json()["items"]
        assert [(e["actor"], e["action"]) for e in audit][:3] == [
            ("root@example.test", "token.create"), ("root@example.test", "list.create"),
            ("root@example.test", "domain.add")]
    revoked = relay.cli("token", "revoke", str(listed[0]["id"]))
    assert revoked.returncode == 0
    with httpx.Client(base_url=base, timeout=10) as http:
        assert http.get("/api/v1/me", headers=auth).status_code == 401
    history = relay.cli("user", "ls").stdout
    assert history.strip() == "root@example.test\tadmin"
    # `user role` is a shortcut for the roster's role: the address joins it disabled
    assert relay.cli("user", "add", "ann@example.test", "--password-stdin",
                     input=b"another long password\n").returncode == 0
    role = relay.cli("user", "role", "ann@example.test", "team@example.test", "--role",
                     "owner")
    assert role.stdout.strip() == "ann@example.test is owner of team@example.test"
    roster = json.loads(relay.cli("member", "list", "team@example.test", "--json").stdout)
    assert [(m["address"], m["role"], m["status"]) for m in roster] == [
        ("ann@example.test", "owner", "disabled")]
    ann = relay.cli("token", "create", "--user", "ann@example.test").stdout.strip()
    with httpx.Client(base_url=base, timeout=10) as http:
        mine = http.get("/api/v1/lists", headers={"Authorization": f"Bearer {ann}"})
        assert [item["address"] for item in mine.json()["items"]] == ["team@example.test"]
