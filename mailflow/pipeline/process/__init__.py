"""Processing-chain steps: run after the durable commit; they add deliveries and events."""
