"""Test doubles and harnesses that ship with the package: never imported by production code.

``sink``: an SMTP sink with fault injection; ``relay``: a relay in a child process;
``clock``: a clock tests move by hand.
"""
