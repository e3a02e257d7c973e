"""Egress providers: one small interface (:class:`Egress`), one module per provider."""

from mailflow.egress.base import Egress, RecipientReply

__all__ = ["Egress", "RecipientReply"]
