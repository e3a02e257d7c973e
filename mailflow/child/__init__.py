"""The relay's child process: the wire work (egress conversations, listener sessions)
on a second core, the decisions in the relay.  :mod:`~mailflow.child.messages` holds
every message between the two."""
