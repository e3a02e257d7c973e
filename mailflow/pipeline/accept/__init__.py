"""Accept-chain steps: each decides, per recipient, before the relay says yes."""
