"""MailFlow Relay: a self-hostable mailing-list and alias relay that never loses a message."""

__version__ = "0.1.0"
