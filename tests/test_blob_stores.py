"""The blob store contract (issue 15, part 1), over files and over S3 (moto in server
mode on loopback); ``mailflow gc``'s sweep of bodies whose commit never happened; a
relay whose bodies live in S3, end to end."""

from __future__ import annotations

import os
import smtplib
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import insert

from mailflow.blobs import Blobs, BlobStore, content_hash
from mailflow.s3_blobs import S3BlobStore, parse_blob_url
from mailflow.services.blob_gc import collect_garbage
from mailflow.store import Repository
from mailflow.store.tables import blobs as blob_rows
from mailflow.testing.aws import MotoServer
from mailflow.testing.factories import make_message
from mailflow.testing.relay import RelayProcess
from mailflow.testing.sink import SmtpSink

BODIES = [os.urandom(n) for n in (10, 70_000, 300_000)]


_buckets = iter(range(1_000_000))


@pytest.fixture
def bucket(moto: MotoServer) -> str:
    name = f"bodies-{next(_buckets)}"
    moto.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["files", "s3"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Blobs]:
    """A maker of stores on one place: two of them share nothing but the place."""
    if request.param == "files":
        return lambda: BlobStore(tmp_path / "blobs")
    moto: MotoServer = request.getfixturevalue("moto")
    name = request.getfixturevalue("bucket")
    return lambda: S3BlobStore(f"s3://{name}/relay/", client=moto.client("s3"))


def test_a_body_written_is_read_back_by_any_store_on_the_same_place(
        make_store: Callable[[], Blobs]) -> None:
    writer, reader = make_store(), make_store()
    items = [(content_hash(b), b) for b in BODIES]
    writer.write_many(items)
    for digest, body in items:
        assert reader.read(digest) == body
        if isinstance(reader, S3BlobStore):  # a round trip saved: kept once read
            assert reader.cached(digest) == body


def test_a_missing_body_is_file_not_found(make_store: Callable[[], Blobs]) -> None:
    with pytest.raises(FileNotFoundError):
        make_store().read("0" * 64)


def test_a_body_deleted_by_another_relay_is_written_again(
        make_store: Callable[[], Blobs]) -> None:
    mine, collector = make_store(), make_store()
    digest = content_hash(BODIES[1])
    mine.write_many([(digest, BODIES[1])])
    collector.unlink_many([digest])
    with pytest.raises(FileNotFoundError):
        collector.read(digest)
    mine.write_many([(digest, BODIES[1])])  # the commit's re-check finds it gone
    assert make_store().read(digest) == BODIES[1]


def test_stored_before_lists_bodies_by_age(make_store: Callable[[], Blobs]) -> None:
    store = make_store()
    items = [(content_hash(b), b) for b in BODIES]
    store.write_many(items)
    listed = dict(store.stored_before(time.time() + 60))
    assert listed == {d: len(b) for d, b in items}
    assert dict(store.stored_before(time.time() - 3600)) == {}


def test_blob_urls() -> None:
    assert parse_blob_url("s3://b").prefix == ""
    assert parse_blob_url("s3://b/a/c/").key("ab" + "0" * 62) == "a/c/ab/ab" + "0" * 62
    for bad in ("http://b/x", "s3:///x", "s3://key:secret@b/x", "s3://b/x?region=eu"):
        with pytest.raises(ValueError):
            parse_blob_url(bad)


def test_gc_sweeps_bodies_without_a_row_and_temporary_files(
        repo: Repository, make_store: Callable[[], Blobs], tmp_path: Path) -> None:
    store = make_store()
    items = [(content_hash(b), b) for b in BODIES]
    store.write_many(items)
    kept = items[0][0]
    with repo.engines.writer.begin() as conn:  # a committed message's body
        conn.execute(insert(blob_rows), [{"hash": kept, "size": 10, "refcount": 1,
                                          "created_at": time.time()}])
    leftover = tmp_path / "blobs" / "ab" / f".{'ab' * 32}.1.2.tmp"
    if isinstance(store, BlobStore):
        leftover.parent.mkdir(parents=True, exist_ok=True)
        leftover.write_bytes(b"half a body")
    later = time.time() + 2 * 86_400  # everything is older than a day by then
    done = collect_garbage(repo, store, later, blob_retention=3600, message_retention=3600)
    assert done.orphans == 2
    assert done.orphan_bytes == len(BODIES[1]) + len(BODIES[2])
    assert done.leftovers == (1 if isinstance(store, BlobStore) else 0)
    assert not leftover.exists()
    fresh = make_store()
    assert fresh.read(kept) == BODIES[0]
    for digest, _ in items[1:]:
        with pytest.raises(FileNotFoundError):
            fresh.read(digest)
    # Young bodies are never swept, committed or not: their commit may be under way.
    store.write_many(items[1:])
    again = collect_garbage(repo, store, time.time(), blob_retention=3600,
                            message_retention=3600)
    assert again.orphans == 0


# -- a relay on S3 ------------------------------------------------------------------------

def test_a_relay_keeps_bodies_in_s3_and_refuses_for_now_when_it_cannot(
        make_relay: Callable[..., RelayProcess], sink: SmtpSink, moto: MotoServer,
        bucket: str) -> None:
    relay = make_relay(blob_url=f"s3://{bucket}/mail", max_body_in_database="0")
    relay.env.update(moto.env)  # the standard AWS configuration, as an operator sets it
    relay.start()
    address, members = relay.fresh_list(members=2)
    body = b"A body kept in S3.\r\n" * 500
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.sendmail("ann@outside.test", [address], make_message(address, body=body))
    (copy,) = sink.wait_for_copies(members)
    assert copy.content.endswith(body)
    keys = [o["Key"] for o in moto.client("s3").list_objects_v2(
        Bucket=bucket, Prefix="mail/").get("Contents", [])]
    assert len(keys) == 1 and keys[0].startswith("mail/")

    s3 = moto.client("s3")
    s3.delete_object(Bucket=bucket, Key=keys[0])
    s3.delete_bucket(Bucket=bucket)  # the store is gone: a PUT now fails
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail("ann@outside.test")
        client.rcpt(address)
        code, text = client.data(make_message(address, body=b"another body\r\n" * 400))
    assert code == 451, text
    assert text.startswith(b"4.3.0"), text
