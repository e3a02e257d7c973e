"""``mailflow pipe``: one message on stdin, submitted for a Postfix pipe transport.

Postfix decides what to do with a message from the command's exit status (sysexits):
0 delivered, 67 unknown user and 65 bad data bounce the message, 75 makes Postfix keep it
and retry.  Anything that is not certainly permanent is therefore 75: a database that is
down, a relay that does not answer, a configuration mistake an administrator will fix.

The message goes either straight into the store (the running relay finds it within its
poll interval) or, with ``--url``, to a relay's ``POST /v1/email``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mailflow.blob_stores import open_blob_store
from mailflow.clock import SystemClock
from mailflow.config import Settings, load_settings
from mailflow.errors import (
    EX_DATAERR,
    EX_OK,
    EX_TEMPFAIL,
    ConfigurationError,
    SmtpReplyError,
    spec,
    spec_for_enhanced,
    status_line,
)
from mailflow.model import Envelope
from mailflow.pipeline.chain import process_chain
from mailflow.services.accept import AcceptPolicy, AcceptService, store_lookup
from mailflow.services.commit import GroupCommitter, InlineExpansion
from mailflow.services.filter_rules import store_filter_book
from mailflow.services.installation import (
    instance_id,
    list_commands,
    srs_codec,
    unsubscribe_tokens,
)
from mailflow.services.rosters import StoreRoster
from mailflow.services.sender_rules import store_rule_book
from mailflow.store import StoreRunner, create_engines
from mailflow.store.engine import describe_database_error, sqlite_path
from mailflow.verp import Verp


@dataclass(frozen=True, slots=True)
class PipeResult:
    status: int
    reason: str  # "2.0.0 queued as …" or an enhanced status code and the reason


async def submit_to_store(settings: Settings, envelope: Envelope, raw: bytes) -> PipeResult:
    """Store the message directly, with the same checks a relay's SMTP listener makes."""
    database = sqlite_path(settings.resolved_database_url)
    if database is not None and not database.exists():
        return PipeResult(EX_TEMPFAIL, f"4.3.0 no relay store at {database}: run mailflow init")
    clock = SystemClock()
    runner = StoreRunner(create_engines(settings.resolved_database_url, pool_size=1),
                         pool_size=1, roles=settings.role_addresses)
    committer_task: asyncio.Task[None] | None = None
    try:
        instance = await runner.write(instance_id, settings, runner.repo)
        srs = await runner.write(srs_codec, settings, runner.repo)
        runner.repo.verp = Verp(srs.secret)  # a bounce piped in is read as the relay would
        # A list command piped in is answered as the relay would.
        unsubscribe = await runner.write(unsubscribe_tokens, settings, runner.repo)
        chain = process_chain(list_commands(settings, unsubscribe))
        blobs = open_blob_store(settings.blob_url, settings.blob_dir,
                                settings.cache_budget.recent_contents)
        committer = GroupCommitter(
            runner, blobs, clock, body_limit=settings.max_body_in_database,
            expansion=InlineExpansion(settings.max_inline_deliveries, chain))
        committer_task = asyncio.create_task(committer.run())
        service = AcceptService(store_lookup(runner), committer, clock, AcceptPolicy(
            instance, settings.max_message_size, settings.max_received_headers, 0,
            settings.filter_regex_timeout),
            rules=store_rule_book(runner, clock, 0), filters=store_filter_book(runner, clock, 0),
            roster=StoreRoster(runner),
            srs=srs)
        message_id = await service.submit(envelope, raw)
    except SmtpReplyError as error:
        return PipeResult(spec(error).sysexit, status_line(error))
    except Exception as error:
        described = describe_database_error(settings.resolved_database_url, error)
        if described is None:
            raise
        return PipeResult(EX_TEMPFAIL, f"4.3.0 mailflow pipe: database error: {described}")
    finally:
        if committer_task is not None:
            committer_task.cancel()
            await asyncio.gather(committer_task, return_exceptions=True)
        await asyncio.to_thread(runner.close)
    return PipeResult(EX_OK, f"2.0.0 queued as {message_id}")


def submit_over_http(url: str, key: str, envelope: Envelope, raw: bytes,
                     timeout: float) -> PipeResult:
    """POST to a relay's /v1/email (blocking; the command has nothing else to do)."""
    query = urllib.parse.urlencode([("from", envelope.mail_from),
                                    *(("to", r) for r in envelope.rcpt_tos)])
    endpoint = url.rstrip("/")
    if not endpoint.endswith("/v1/email"):
        endpoint += "/v1/email"
    request = urllib.request.Request(
        f"{endpoint}?{query}", data=raw, method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "message/rfc822"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = json.loads(response.read() or b"{}")
            return PipeResult(EX_OK, f"2.0.0 queued as {body.get('message_id', '?')}")
    except urllib.error.HTTPError as error:
        return _from_problem(error.code, error.read())
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        reason = getattr(error, "reason", error)
        return PipeResult(EX_TEMPFAIL, f"4.4.1 relay at {url} unreachable: {reason}")


def _from_problem(status: int, body: bytes) -> PipeResult:
    try:
        problem = json.loads(body)
    except ValueError:
        problem = {}
    detail = problem.get("detail") or f"HTTP {status}"
    enhanced = problem.get("enhanced_status", "")
    if status in (400, 413, 422):
        # The relay's own refusal: the error table says what its enhanced status means.
        refusal = spec_for_enhanced(enhanced)
        code = refusal.sysexit if refusal is not None else EX_DATAERR
        return PipeResult(code, f"{enhanced or ('5.0.0' if status == 422 else '5.6.0')} "
                                f"{detail}")
    if status in (401, 403):
        return PipeResult(EX_TEMPFAIL, f"4.7.0 relay refused the key: {detail}")
    return PipeResult(EX_TEMPFAIL, f"4.3.0 relay answered {status}: {detail}")


class _Deadline(Exception):
    pass


def run_pipe(config: Path | None, sender: str, recipients: list[str], url: str | None,
             psk_file: Path | None, timeout: float) -> PipeResult:
    """The whole command under one deadline; every failure becomes an exit status."""
    def expire(signum: int, frame: object) -> None:
        raise _Deadline

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        return _run(config, sender, recipients, url, psk_file, timeout)
    except _Deadline:
        return PipeResult(EX_TEMPFAIL, f"4.4.7 mailflow pipe: gave up after {timeout:g} s")
    except ConfigurationError as error:
        row = spec(error)
        return PipeResult(row.sysexit, f"{row.enhanced} {error}".replace("\n", " "))
    except Exception as error:  # never let a traceback bounce mail: Postfix retries on 75
        first = " ".join(str(error).split("\n")[0].split())  # one line in Postfix's log
        return PipeResult(EX_TEMPFAIL, f"4.3.0 mailflow pipe failed: "
                                       f"{type(error).__name__}: {first}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _run(config: Path | None, sender: str, recipients: list[str], url: str | None,
         psk_file: Path | None, timeout: float) -> PipeResult:
    settings = load_settings(config)
    raw = sys.stdin.buffer.read(settings.max_message_size + 1)
    if len(raw) > settings.max_message_size:
        return PipeResult(EX_DATAERR, f"5.3.4 message larger than {settings.max_message_size} "
                                      "bytes")
    envelope = Envelope(mail_from=sender.strip("<>"), rcpt_tos=tuple(recipients),
                        protocol="PIPE")
    if not url:
        return asyncio.run(submit_to_store(settings, envelope, raw))
    keys = ([k.strip() for k in psk_file.read_text().split(",") if k.strip()] if psk_file
            else settings.ingress_keys)
    key = keys[0] if keys else ""  # a rotation list: the first key is the current one
    if not key:
        return PipeResult(EX_TEMPFAIL, "4.3.5 no key for --url: set MAILFLOW_INGRESS_PSK "
                                       "or --psk-file")
    return submit_over_http(url, key, envelope, raw, timeout)
