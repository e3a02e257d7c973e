"""Send-chain steps: each adds to (or replaces list fields of) one outgoing copy."""
