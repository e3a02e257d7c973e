"""SES notifications go to what handles their kind."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import pytest

from mailflow.ingress.ses import SesIngest, SesNotifications
from mailflow.ingress.ses_notification import BadNotification

# Shapes from AWS's documented examples, cut to what dispatch reads.
BOUNCE = {"notificationType": "Bounce", "bounce": {"bounceType": "Permanent"},
          "mail": {"messageId": "0000-1"}}
COMPLAINT = {"notificationType": "Complaint", "complaint": {}, "mail": {"messageId": "0000-2"}}
DELIVERY = {"eventType": "Delivery", "delivery": {}, "mail": {"messageId": "0000-3"}}
NO_INGEST = cast(SesIngest, None)  # these notifications never reach received mail


async def test_feedback_goes_to_the_injected_handler() -> None:
    seen: list[Mapping[str, Any]] = []

    async def feedback(notification: Mapping[str, Any]) -> None:
        seen.append(notification)

    dispatcher = SesNotifications(NO_INGEST, feedback)
    for notification in (BOUNCE, COMPLAINT, DELIVERY):
        await dispatcher.handle(notification)
    assert seen == [BOUNCE, COMPLAINT, DELIVERY]


async def test_feedback_without_a_handler_is_logged_and_acknowledged(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", "mailflow.ingress.ses")
    dispatcher = SesNotifications(NO_INGEST)
    await dispatcher.handle(BOUNCE)
    await dispatcher.handle({"notificationType": "AMAZON_SES_SETUP_NOTIFICATION"})
    assert "SES Bounce notification acknowledged" in caplog.text


@pytest.mark.parametrize("notification", [{"notificationType": "Surprise"}, {"mail": {}}])
async def test_unknown_notifications_are_bad(notification: dict[str, Any]) -> None:
    with pytest.raises(BadNotification):
        await SesNotifications(NO_INGEST).handle(notification)
