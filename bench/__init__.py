"""Benchmarks of MailFlow Relay: ingest, fan-out and latency, end to end over loopback.

``make bench`` (``python -m bench.run``) starts a relay (SQLite store, SMTP egress) and a
fast SMTP sink (Postfix's ``smtp-sink``, else the Python sink of ``mailflow.testing``),
drives it over SMTP and writes ``bench/RESULTS.md``.  See ``bench/run.py`` for the options.
"""
