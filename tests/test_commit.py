"""The group commit's bound on an ingest's wait: a stuck writer gives 451, never a hang."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailflow.blobs import BlobStore
from mailflow.errors import StorageUnavailable
from mailflow.model import InboundMessage
from mailflow.services import commit
from mailflow.services.commit import GroupCommitter, InlineExpansion, content_digest
from mailflow.store import Engines, StoreRunner
from mailflow.testing.clock import FakeClock
from mailflow.testing.factories import make_message


async def test_an_ingest_whose_commit_never_comes_gets_a_temporary_failure(
        engines: Engines, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commit, "COMMIT_WAIT", 0.05)
    runner = StoreRunner(engines)
    clock = FakeClock()
    # Never started: its writer loop is the stuck one.
    committer = GroupCommitter(runner, BlobStore(tmp_path / "blobs"), clock, body_limit=65536,
                               expansion=InlineExpansion(1000))
    data = make_message("team@example.test")
    message = InboundMessage("m1", "p@outside.test", ("team@example.test",),
                             await content_digest(data), len(data), clock.now(), "127.0.0.1",
                             "c.test", "ESMTP")
    try:
        with pytest.raises(StorageUnavailable, match="timed out"):
            await committer.commit(message, data)
        assert (await runner.read(runner.repo.message_counts))["received"] == 0
    finally:
        runner.close()
