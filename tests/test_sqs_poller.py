"""The SQS poller against moto in server mode: visibility kept while a message is handled,
unreadable messages left for the queue's redrive policy."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

import pytest

from mailflow.ingress.aws import AwsClients
from mailflow.ingress.sqs import SqsPoller
from mailflow.testing.aws import MotoServer, received_notification


@pytest.fixture
def aws_env(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    for name, value in moto.env.items():
        monkeypatch.setenv(name, value)
    return moto


class Handler:
    """Notifications handled: each waits until ``release`` is set."""

    def __init__(self) -> None:
        self.seen: list[Mapping[str, Any]] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def handle(self, notification: Mapping[str, Any]) -> None:
        self.seen.append(notification)
        self.started.set()
        await self.release.wait()


def counts(sqs: Any, url: str) -> tuple[int, int]:
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return (int(attributes["ApproximateNumberOfMessages"]),
            int(attributes["ApproximateNumberOfMessagesNotVisible"]))


async def run_poller(aws_env: MotoServer, url: str, handler: Handler, visibility: int
                     ) -> tuple[SqsPoller, asyncio.Task[None], AwsClients]:
    aws = await AwsClients.create(5.0, 1, threads=4)
    poller = SqsPoller(aws, url, handler, wait=1, visibility=visibility,  # type: ignore[arg-type]
                       topics=frozenset())
    return poller, asyncio.create_task(poller.run()), aws


async def stop(poller: SqsPoller, task: asyncio.Task[None], aws: AwsClients) -> None:
    poller.stop()
    await asyncio.wait_for(task, 10)
    aws.close()


async def test_message_stays_invisible_while_handled_then_deleted(aws_env: MotoServer) -> None:
    sqs = aws_env.client("sqs")
    url = sqs.create_queue(QueueName=f"q-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    note = received_notification("ses-1", "a@b.test", ["l@example.test"], bucket="b", key="k")
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(note))
    handler = Handler()
    poller, task, aws = await run_poller(aws_env, url, handler, visibility=3)
    try:
        await asyncio.wait_for(handler.started.wait(), 10)
        # Past the 3 s visibility the receive asked for: still not visible to others.
        await asyncio.sleep(4)
        assert await asyncio.to_thread(counts, sqs, url) == (0, 1)
        handler.release.set()
        deadline = time.monotonic() + 10
        while await asyncio.to_thread(counts, sqs, url) != (0, 0):
            assert time.monotonic() < deadline, "not deleted after it was handled"
            await asyncio.sleep(0.1)
    finally:
        handler.release.set()
        await stop(poller, task, aws)
    assert handler.seen == [note]


async def test_unreadable_message_is_left_for_the_redrive_policy(
        aws_env: MotoServer, caplog: pytest.LogCaptureFixture) -> None:
    sqs = aws_env.client("sqs")
    name = uuid.uuid4().hex[:8]
    dlq = sqs.create_queue(QueueName=f"dlq-{name}")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"]
                                       )["Attributes"]["QueueArn"]
    url = sqs.create_queue(QueueName=f"q-{name}", Attributes={"RedrivePolicy": json.dumps(
        {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "2"})})["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="not a notification")
    handler = Handler()
    caplog.set_level(logging.ERROR, "mailflow.ingress.sqs")
    poller, task, aws = await run_poller(aws_env, url, handler, visibility=1)
    try:
        deadline = time.monotonic() + 15
        while await asyncio.to_thread(counts, sqs, dlq) == (0, 0):
            assert time.monotonic() < deadline, "never moved to the dead-letter queue"
            await asyncio.sleep(0.2)
    finally:
        await stop(poller, task, aws)
    assert handler.seen == []
    assert "received 2 times" in caplog.text
    assert await asyncio.to_thread(counts, sqs, url) == (0, 0)
