"""The ``mailflow`` command: set up, run and manage a relay.

Management commands talk to the store directly (SQLite file or PostgreSQL), so they work
whether or not the relay is running, and a running relay sees their changes at once.
Errors go to stderr with a non-zero exit status and say what to do next.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from mailflow import __version__, addresses
from mailflow.blob_stores import open_blob_store
from mailflow.clock import SystemClock
from mailflow.config import Settings, load_settings
from mailflow.errors import (
    EX_TEMPFAIL,
    ConfirmationNeeded,
    Conflict,
    InvalidInput,
    MailflowError,
    NotFound,
    spec,
)
from mailflow.logs import configure_logging
from mailflow.memory import release_large_blocks
from mailflow.model import (
    AddedMembers,
    DeliveryRow,
    DeliveryStatus,
    DkimKey,
    DmarcMode,
    ForwardStyle,
    ListKind,
    ListRole,
    Member,
    MemberRole,
    MessageTrace,
    NonMemberAction,
    PostingPolicy,
    QueueSelection,
    RuleAction,
    SubscriptionPolicy,
    TokenScope,
)
from mailflow.pipeline.accept import filters
from mailflow.services import directory as rules
from mailflow.services.access import AccessService
from mailflow.services.directory import DirectoryService
from mailflow.services.installation import list_commands, unsubscribe_tokens
from mailflow.services.member_csv import read_member_rows
from mailflow.services.moderation import REASON_MAX_LENGTH, Moderation, content_reader
from mailflow.services.queue_operations import (
    QueueOperations,
    selection_of,
)
from mailflow.services.subscriptions import Subscriptions
from mailflow.services.timespec import parse_moment
from mailflow.services.trace import TraceService
from mailflow.store import Repository, create_cli_engines
from mailflow.store.access import AccessRepository
from mailflow.store.engine import describe_database_error, normalize_url, sqlite_path
from mailflow.store.operations import OperationsStore

F = TypeVar("F", bound=Callable[..., Any])
Row = TypeVar("Row")

EXAMPLE_DOMAIN = "example.test"
EXAMPLE_LIST = "team@example.test"
EXAMPLE_MEMBERS = ("alice@example.test", "bob@example.test")

# The exit statuses of domain errors are in mailflow.errors.TABLE (``cli_exit``).
EXIT_FAILURE = 1
EXIT_NOT_FOUND = spec(NotFound).cli_exit


class StoreError(Exception):
    """A database error already worded for an operator (names the store, says what to check)."""


@contextmanager
def store_errors(url: str) -> Iterator[None]:
    """Word the store's errors inside the block for the store at ``url``."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise StoreError(describe_database_error(url, exc) or str(exc)) from exc


class Context:
    def __init__(self, config: Path | None) -> None:
        self.config = config
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config)
        return self._settings

    @contextmanager
    def repository(self) -> Iterator[Repository]:
        settings = self.settings
        url = settings.resolved_database_url
        sqlite_file = sqlite_path(url)
        if sqlite_file is not None and not sqlite_file.exists():
            raise MailflowError(f"no relay store at {sqlite_file}; run `mailflow init` first "
                                "(or set MAILFLOW_DATA_DIR / MAILFLOW_DATABASE_URL)")
        with store_errors(url):
            engines = create_cli_engines(url)
            try:
                yield Repository(engines)
            finally:
                engines.dispose()

    @contextmanager
    def directory(self) -> Iterator[DirectoryService]:
        with self.repository() as repo:
            yield DirectoryService(repo)

    @contextmanager
    def moderation(self) -> Iterator[Moderation]:
        """Held posts' moderation: the store, and the blob files the posts are in."""
        with self.repository() as repo:
            blobs = open_blob_store(self.settings.blob_url, self.settings.blob_dir, 0)
            yield Moderation(repo, SystemClock(), content_reader(repo, blobs.read))

    @contextmanager
    def subscriptions(self) -> Iterator[Subscriptions]:
        """Requests to join: the store, and the list commands step as the relay builds it
        (its tokens and public URL for the welcome mail)."""
        with self.repository() as repo:
            step = list_commands(self.settings, unsubscribe_tokens(self.settings, repo))
            yield Subscriptions(repo, SystemClock(), step)

    @contextmanager
    def access(self) -> Iterator[AccessService]:
        with self.repository() as repo:
            yield AccessService(AccessRepository(repo.engines))


pass_context = click.make_pass_decorator(Context)


def fail(message: str, code: int = EXIT_FAILURE) -> None:
    click.echo(f"mailflow: error: {message}", err=True)
    sys.exit(code)


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


def emit_rows(rows: Iterable[Row], as_json: bool, as_object: Callable[[Row], Any],
              as_line: Callable[[Row], str]) -> None:
    """The one shape of every ``ls`` command: ``--json`` prints a JSON array of
    ``as_object`` (``[]`` when there are none), else a line of ``as_line`` per row."""
    if as_json:
        emit_json([as_object(row) for row in rows])
        return
    for row in rows:
        click.echo(as_line(row))


def hint(error: MailflowError, command: str | None) -> str:
    """What to run next, added to a domain error's message (the error names no command)."""
    if isinstance(error, NotFound):
        if error.kind == "domain":
            if command == "domain":
                return "; see `mailflow domain list`"
            return f"; add it first with `mailflow domain add {error.name}`"
        if error.kind == "list":
            return "; see `mailflow list ls`"
        if error.kind == "rule" and command in ("block", "allow"):
            return f"; see `mailflow {command} ls`"
        if error.kind == "filter":
            return "; see `mailflow filter ls ADDRESS`"
        if error.kind == "message":
            return "; see `mailflow held ls`"
        if error.kind == "suppression":
            return "; see `mailflow suppress ls`"
        if error.kind == "dkim":
            return "; see `mailflow dkim ls`"
    if isinstance(error, Conflict) and error.kind == "dkim":
        return f"; `mailflow dkim keygen {error.name} --replace` makes a new one"
    if isinstance(error, Conflict) and error.kind == "domain" and error.dependents:
        return "; delete them first with `mailflow list delete`"
    return ""


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "-c", type=click.Path(path_type=Path),
              help="mailflow.toml to read (default: $MAILFLOW_CONFIG, else ./mailflow.toml)")
@click.version_option(__version__, prog_name="mailflow")
@click.pass_context
def cli(ctx: click.Context, config: Path | None) -> None:
    """MailFlow Relay: mailing lists and aliases that never lose a message."""
    ctx.obj = Context(config)


# -- init and serve ---------------------------------------------------------------------

@cli.command()
@click.option("--example", is_flag=True,
              help=f"also create {EXAMPLE_LIST} with members alice@ and bob@{EXAMPLE_DOMAIN}")
@pass_context
def init(ctx: Context, example: bool) -> None:
    """Create the data directory and the database schema (safe to run again)."""
    from mailflow.services.installation import initialise

    settings = ctx.settings
    with store_errors(settings.resolved_database_url):
        instance = initialise(settings)
    shown = make_url(normalize_url(settings.resolved_database_url))
    click.echo(f"initialised {shown.render_as_string(hide_password=True)} "
               f"(instance {instance})")
    if example:
        with ctx.directory() as directory:
            if EXAMPLE_DOMAIN not in {d.name for d in directory.domains()}:
                directory.add_domain(EXAMPLE_DOMAIN)
            if directory.find_list(EXAMPLE_LIST) is None:
                directory.create_list(EXAMPLE_LIST, name="Example team")
            directory.add_members(EXAMPLE_LIST, EXAMPLE_MEMBERS)
        click.echo(f"example list {EXAMPLE_LIST} with members {', '.join(EXAMPLE_MEMBERS)}")


@cli.command()
@click.option("--init", "initialise_store", is_flag=True,
              help="create the store if there is none (as `mailflow init` does) instead of "
                   "refusing to start")
@click.option("--role", type=click.Choice(["all", "ingress", "worker", "web"]),
              help="what this process runs (default: the role setting, else all): "
                   "ingress takes mail, worker sends it, web serves the API and UI; "
                   "split roles share one PostgreSQL and one blob store (docs/scaling.md)")
@pass_context
def serve(ctx: Context, initialise_store: bool, role: str | None) -> None:
    """Run the relay (SMTP/LMTP listeners, pipeline, scheduler, HTTP) until stopped."""
    from mailflow.app import serve as run_relay
    from mailflow.services.installation import require_store

    overrides = {} if role is None else {"role": role}
    if role is not None:
        ctx._settings = load_settings(ctx.config, **overrides)
    settings = ctx.settings
    if not initialise_store:
        # A wrong data directory must not become an empty store that refuses every
        # recipient (senders' mail would bounce); the relay's start-up then migrates it.
        with store_errors(settings.resolved_database_url):
            require_store(settings)
    configure_logging(settings.log_level, settings.log_format)
    release_large_blocks()  # message-sized blocks go back to the system when freed
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every POSIX system
        asyncio.run(run_relay(settings, lambda: load_settings(ctx.config, **overrides)))
    else:
        with store_errors(settings.resolved_database_url):
            uvloop.run(run_relay(settings, lambda: load_settings(ctx.config, **overrides)))


@cli.command()
@pass_context
def vacuum(ctx: Context) -> None:
    """Compact a SQLite store and let it shrink after purges from now on.

    Databases created before the relay set SQLite's incremental auto-vacuum keep the
    size of their busiest day; this rewrites the file once (it needs as much free disk
    again, and the relay's writes wait for it: run it at a quiet time).
    """
    database = sqlite_path(ctx.settings.resolved_database_url)
    before = database.stat().st_size if database is not None and database.exists() else 0
    with ctx.repository() as repo:
        if not repo.vacuum():
            click.echo("PostgreSQL: its autovacuum reclaims space; nothing to do")
            return
    after = database.stat().st_size if database is not None else 0
    click.echo(f"vacuumed {database}: {before:,} -> {after:,} bytes; it now shrinks after "
               "purges")
@click.option("--orphans-older-than", type=click.FloatRange(min=3600), default=86_400.0,
              show_default=True, metavar="SECONDS",
              help="bodies without a database row, and temporary files, older than this "
                   "are removed")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@pass_context
def gc(ctx: Context, orphans_older_than: float, as_json: bool) -> None:
    """Collect garbage now: finished messages, released bodies, expired messages, and
    bodies whose commit never happened (the relay's maintenance does all but the last)."""
    from mailflow.services.blob_gc import collect_garbage

    settings = ctx.settings
    blobs = open_blob_store(settings.blob_url, settings.blob_dir, 0)
    with ctx.repository() as repo:
        try:
            done = collect_garbage(repo, blobs, time.time(),
                                   blob_retention=settings.blob_retention,
                                   message_retention=settings.message_retention,
                                   orphan_age=orphans_older_than)
        except OSError as exc:
            fail(f"blob store {blobs.describe()}: {exc}", EX_TEMPFAIL)
    if as_json:
        emit_json({"store": blobs.describe(), **dataclasses.asdict(done)})
        return
    click.echo(f"{blobs.describe()}: {done.finished} message(s) finished, {done.released} "
               f"body(ies) released, {done.purged} message(s) purged, {done.orphans} "
               f"orphaned body(ies) removed ({done.orphan_bytes:,} bytes), {done.leftovers} "
               "temporary file(s) removed")


# -- pipe -------------------------------------------------------------------------------

@cli.command()
@click.option("--from", "sender", default="", metavar="SENDER",
              help="envelope sender (Postfix: ${sender}); empty for bounces")
@click.option("--to", "recipients", multiple=True, metavar="RECIPIENT",
              help="envelope recipient (Postfix: ${recipient}); repeat for several")
@click.option("--url", help="submit to this relay's HTTP ingress instead of the local store")
@click.option("--psk-file", type=click.Path(dir_okay=False, path_type=Path),
              help="file holding the pre-shared key for --url (default: $MAILFLOW_INGRESS_PSK)")
@click.option("--timeout", type=click.FloatRange(1, 3600), default=120.0, show_default=True,
              help="give up (exit 75) after this many seconds; keep it under Postfix's "
                   "command_time_limit")
@pass_context
def pipe(ctx: Context, sender: str, recipients: tuple[str, ...], url: str | None,
         psk_file: Path | None, timeout: float) -> None:
    """Submit the message on standard input, for a Postfix pipe transport.

    Exit status as Postfix expects (sysexits): 0 accepted, 67 unknown recipient, 65
    malformed or refused message, 75 temporary failure (Postfix keeps it and retries).
    """
    from mailflow.ingress.pipe import run_pipe

    result = run_pipe(ctx.config, sender, list(recipients), url, psk_file, timeout)
    stream = sys.stdout if result.status == 0 else sys.stderr
    print(result.reason, file=stream, flush=True)
    sys.exit(result.status)


# -- domains ----------------------------------------------------------------------------

@cli.group()
def domain() -> None:
    """Domains this relay accepts mail for."""


@domain.command("add")
@click.argument("names", nargs=-1, required=True)
@pass_context
def domain_add(ctx: Context, names: tuple[str, ...]) -> None:
    """Serve NAMES: mail to lists and aliases in them is accepted."""
    valid = [rules.validated_domain(n) for n in names]  # all valid, or none added
    with ctx.directory() as directory:
        for name in valid:
            added = directory.add_domain(name)
            shown = addresses.u_labels(added.name)
            click.echo(f"added domain {added.name}"
                       + (f" ({shown})" if shown != added.name else ""))


@domain.command("list")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@pass_context
def domain_list(ctx: Context, as_json: bool) -> None:
    """Show the domains served."""
    with ctx.directory() as directory:
        domains = directory.domains()
    emit_rows(domains, as_json, lambda d: {"name": d.name, "created_at": d.created_at},
              lambda d: d.name)


@domain.command("remove")
@click.argument("name")
@pass_context
def domain_remove(ctx: Context, name: str) -> None:
    """Stop serving NAME (it must have no lists left)."""
    with ctx.directory() as directory:
        directory.remove_domain(name)
    click.echo(f"removed domain {name}")


# -- lists and aliases ------------------------------------------------------------------

@cli.group("list")
def list_group() -> None:
    """Mailing lists and aliases."""


@list_group.command("create")
@click.argument("address")
@click.option("--kind", type=click.Choice([k.value for k in ListKind]), default="list",
              show_default=True, help="list: members get decorated copies; alias: forward; "
                                      "echo: answers each message with a copy of it")
@click.option("--name", default="", help="display name (used in List-Id)")
@click.option("--priority", type=int, default=0, show_default=True,
              help=f"{rules.PRIORITY_MIN} to {rules.PRIORITY_MAX}; higher is delivered first "
                   "when the queue is busy")
@pass_context
def list_create(ctx: Context, address: str, kind: str, name: str, priority: int) -> None:
    """Create a list or alias at ADDRESS (its domain must be served)."""
    with ctx.directory() as directory:
        created = directory.create_list(address, kind=kind, name=name, priority=priority)
    click.echo(f"created {created.kind.value} {created.address}")


@list_group.command("update")
@click.argument("address")
@click.option("--kind", type=click.Choice([k.value for k in ListKind]),
              help="list: members get decorated copies; alias: forward")
@click.option("--name", help="display name (used in List-Id); \"\" removes it")
@click.option("--priority", type=int,
              help=f"{rules.PRIORITY_MIN} to {rules.PRIORITY_MAX}; higher is delivered first "
                   "when the queue is busy")
@click.option("--forward-style", type=click.Choice([s.value for s in ForwardStyle]),
              help="aliases: resend (the message as received) or fwd (a new message "
                   "from the alias, \"Fwd:\", the original's attachments unchanged)")
@click.option("--dmarc", type=click.Choice([m.value for m in DmarcMode]),
              help="lists: when copies carry \"Author via List\" <list> in From: (auto: "
                   "for authors whose domain publishes DMARC p=quarantine or p=reject)")
@click.option("--posting", type=click.Choice([p.value for p in PostingPolicy]),
              help="who may post: open (anyone), members, moderated (every post held), "
                   "announce (owners and moderators only)")
@click.option("--non-member-action", type=click.Choice([a.value for a in NonMemberAction]),
              help="what a post the posting policy does not admit gets: reject (550 "
                   "5.7.1), hold (for a moderator) or discard")
@click.option("--hold-days", type=int,
              help=f"held posts are discarded, and requests to join expire, after this "
                   f"many days without a decision (1 to {rules.HOLD_DAYS_MAX}; default 14)")
@click.option("--subject-prefix", help="lists: put before each copy's Subject, once (such "
              "as \"[team]\"); \"\" removes it")
@click.option("--reply-to", help="lists: none (keep the post's), list, or an address")
@click.option("--header-file", type=click.Path(exists=True, dir_okay=False),
              help="lists: a Jinja2 template of text put before each copy's body (an empty "
                   "file removes it); see docs/lists.md for its names")
@click.option("--footer-file", type=click.Path(exists=True, dir_okay=False),
              help="lists: a Jinja2 template of text put after each copy's body (an empty "
                   "file removes it)")
@click.option("--archive-url", help="lists: the List-Archive URL; \"\" removes it")
@click.option("--personalize", type=click.Choice(["on", "off"]),
              help="lists: on, one copy per member with its own bounce address "
                   "(LIST-bounces+TOKEN@domain, VERP); off, shared copies")
@click.option("--bounce-threshold", type=float,
              help=f"lists: the bounce score that disables a member "
                   f"({rules.MIN_BOUNCE_THRESHOLD:g} to {rules.MAX_BOUNCE_THRESHOLD:g}; "
                   "default 5)")
@click.option("--subscription", type=click.Choice([p.value for p in SubscriptionPolicy]),
              help="lists: how a request to join (LIST-join@, LIST-request@, the list's "
                   "page) is handled: open (joined at once), confirm (the address confirms "
                   "first; the default), approve (owners decide), closed (refused)")
@click.option("--welcome-file", type=click.Path(exists=True, dir_okay=False),
              help="lists: a Jinja2 template of the mail a new member gets (an empty file "
                   "restores the default text)")
@click.option("--goodbye-file", type=click.Path(exists=True, dir_okay=False),
              help="lists: a Jinja2 template of the mail a leaving member gets (an empty "
                   "file restores the default text)")
@pass_context
def list_update(ctx: Context, address: str, kind: str | None, name: str | None,
                priority: int | None, forward_style: str | None, dmarc: str | None,
                posting: str | None, non_member_action: str | None,
                hold_days: int | None, subject_prefix: str | None,
                reply_to: str | None, header_file: str | None, footer_file: str | None,
                archive_url: str | None, personalize: str | None,
                bounce_threshold: float | None, subscription: str | None,
                welcome_file: str | None, goodbye_file: str | None) -> None:
    """Change the kind, display name, priority, forward style, DMARC mode, posting
    policy, decoration, personalization, bounce threshold or subscription policy and
    greetings of the list or alias at ADDRESS."""
    decoration = {key: value for key, value in (
        ("subject_prefix", subject_prefix), ("reply_to", reply_to),
        ("header_template", _template_file(header_file)),
        ("footer_template", _template_file(footer_file)), ("archive_url", archive_url))
        if value is not None}
    welcome, goodbye = _template_file(welcome_file), _template_file(goodbye_file)
    if all(v is None for v in (kind, name, priority, forward_style, dmarc, posting,
                               non_member_action, hold_days, personalize,
                               bounce_threshold, subscription, welcome, goodbye)) \
            and not decoration:
        raise click.UsageError("nothing to update: give --name, --priority, --kind, "
                               "--forward-style, --dmarc, --posting, --non-member-action, "
                               "--hold-days, --subject-prefix, --reply-to, --header-file, "
                               "--footer-file, --archive-url, --personalize, "
                               "--bounce-threshold, --subscription, --welcome-file or "
                               "--goodbye-file")
    with ctx.directory() as directory:
        updated = directory.update_list(address, kind=kind, name=name, priority=priority,
                                        forward_style=forward_style, dmarc=dmarc,
                                        posting=posting,
                                        non_member_action=non_member_action,
                                        hold_days=hold_days, decoration=decoration,
                                        personalize=None if personalize is None
                                        else personalize == "on",
                                        bounce_threshold=bounce_threshold,
                                        subscription=subscription,
                                        welcome_template=welcome, goodbye_template=goodbye)
    click.echo(f"updated {updated.kind.value} {updated.address}")


def _template_file(path: str | None) -> str | None:
    """A template file's text (UTF-8), or None when no file was given."""
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as source:
            return source.read()
    except UnicodeDecodeError:
        raise click.BadParameter(f"{path} is not UTF-8 text") from None
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {exc.strerror}") from None


@list_group.command("show")
@click.argument("address")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@pass_context
def list_show(ctx: Context, address: str, as_json: bool) -> None:
    """Show one list or alias."""
    with ctx.directory() as directory:
        found = directory.get_list(address)
        roster = directory.members(found.address)
    info = {"address": found.address, "kind": found.kind.value, "name": found.name,
            "priority": found.priority, "forward_style": found.forward_style.value,
            "dmarc": found.dmarc.value,
            "posting": found.posting.value,
            "non_member_action": found.non_member_action.value,
            "hold_days": found.hold_days,
            "personalize": found.personalize, "bounce_threshold": found.bounce_threshold,
            "subscription": found.subscription.value,
            "members": len(roster),
            "active_members": sum(1 for m in roster if m.status.value == "active"),
            "bounces_address": found.bounces_address, "list_id": found.list_id,
            "subject_prefix": found.decoration.subject_prefix,
            "reply_to": found.decoration.reply_to,
            "archive_url": found.decoration.archive_url}
    if as_json:
        info["header_template"] = found.decoration.header_template
        info["footer_template"] = found.decoration.footer_template
        info["welcome_template"] = found.welcome_template
        info["goodbye_template"] = found.goodbye_template
        emit_json(info)
    else:
        for key, value in info.items():
            click.echo(f"{key}: {value}")
        for key, source in (("header_template", found.decoration.header_template),
                            ("footer_template", found.decoration.footer_template),
                            ("welcome_template", found.welcome_template),
                            ("goodbye_template", found.goodbye_template)):
            click.echo(f"{key}: {len(source)} characters (--json shows it)" if source
                       else f"{key}: none")


@list_group.command("ls")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@pass_context
def list_ls(ctx: Context, as_json: bool) -> None:
    """Show every list and alias with its member count."""
    with ctx.directory() as directory:
        rows = directory.lists()
    emit_rows(rows, as_json,
              lambda row: {"address": row[0].address, "kind": row[0].kind.value,
                           "name": row[0].name, "members": row[1]},
              lambda row: f"{row[0].address}\t{row[0].kind.value}\t{row[1]} member(s)\t"
                          f"{row[0].name}")


@list_group.command("delete")
@click.argument("address")
@pass_context
def list_delete(ctx: Context, address: str) -> None:
    """Delete a list or alias and its roster; pending deliveries for it fail."""
    canonical = rules.validated_address(address)
    with ctx.directory() as directory:
        failed = directory.delete_list(canonical)
    click.echo(f"deleted {canonical}" + (f" ({failed} pending deliveries failed)"
                                          if failed else ""))


# -- members ----------------------------------------------------------------------------

@cli.group()
def member() -> None:
    """Members of lists, targets of aliases."""


@member.command("add")
@click.argument("list_address")
@click.argument("members", nargs=-1, required=True)
@click.option("--name", default="",
              help="display name of the member (one address); replaces the name of a "
                   f"member already there; at most {rules.NAME_MAX_LENGTH} characters, "
                   "no control characters")
@click.option("--role", type=click.Choice([r.value for r in MemberRole]),
              help="owner, moderator or member (default for new members: member); "
                   "members already there take it too")
@pass_context
def member_add(ctx: Context, list_address: str, members: tuple[str, ...], name: str,
               role: str | None) -> None:
    """Add MEMBERS to LIST_ADDRESS (alias targets may be in any domain)."""
    target = rules.validated_address(list_address)
    with ctx.directory() as directory:
        result = directory.add_members(target, members, name=name, role=role)
    click.echo(f"added {result.added} member(s) to {target}" + _already(result))


@member.command("set-role")
@click.argument("list_address")
@click.argument("members", nargs=-1, required=True)
@click.option("--role", type=click.Choice([r.value for r in MemberRole]), required=True,
              help="owner and moderator: post to announce lists, are told of held posts")
@pass_context
def member_set_role(ctx: Context, list_address: str, members: tuple[str, ...],
                    role: str) -> None:
    """Give MEMBERS of LIST_ADDRESS a role."""
    target = rules.validated_address(list_address)
    given = set(rules.validated_addresses(members))
    with ctx.directory() as directory:
        changed = directory.set_role(target, sorted(given), role)
    if changed < len(given):
        fail(f"{changed} of {len(given)} are members of {target}; add the others first "
             f"(see `mailflow member list {target}`)", EXIT_NOT_FOUND)
    click.echo(f"{changed} member(s) of {target} now {role}")


def _already(result: AddedMembers) -> str:
    """What an add or import says about the members that were there already."""
    if not result.existing:
        return ""
    renamed = f" ({result.renamed} with a new name)" if result.renamed else ""
    return f"; {result.existing} already there{renamed}"


@member.command("remove")
@click.argument("list_address")
@click.argument("members", nargs=-1, required=True)
@pass_context
def member_remove(ctx: Context, list_address: str, members: tuple[str, ...]) -> None:
    """Remove MEMBERS from LIST_ADDRESS."""
    target = rules.validated_address(list_address)
    gone = rules.validated_addresses(members)
    with ctx.directory() as directory:
        removed = directory.remove_members(target, gone)
    if removed < len(set(gone)):
        fail(f"removed {removed} of {len(set(gone))}: the others were not members of "
             f"{target} (see `mailflow member list {target}`)", EXIT_NOT_FOUND)
    click.echo(f"removed {removed} member(s) from {target}")


def _member_line(m: Member) -> str:
    score = f"\tbounce score {m.bounce_score:g}" if m.bounce_score else ""
    return f"{m.address}\t{m.status.value}\t{m.role.value}{score}" + (
        f"\t{m.name}" if m.name else "")


@member.command("list")
@click.argument("list_address")
@click.option("--json", "as_json", is_flag=True,
              help="a JSON array of objects with address, name, status, role, created_at, "
                   "bounce_score and last_bounce_at")
@pass_context
def member_list(ctx: Context, list_address: str, as_json: bool) -> None:
    """Show the members of LIST_ADDRESS (status: active, disabled or unsubscribed)."""
    with ctx.directory() as directory:
        roster = directory.members(list_address)
    emit_rows(roster, as_json, lambda m: {
        "address": m.address, "name": m.name, "status": m.status.value, "role": m.role.value,
        "created_at": m.created_at, "bounce_score": m.bounce_score,
        "last_bounce_at": m.last_bounce_at}, _member_line)


member.add_command(member_list, "ls")  # as `list ls`


@member.command("enable")
@click.argument("list_address")
@click.argument("members", nargs=-1, required=True)
@pass_context
def member_enable(ctx: Context, list_address: str, members: tuple[str, ...]) -> None:
    """Make MEMBERS of LIST_ADDRESS active again (after bounces or a complaint), with a
    bounce score of 0."""
    target = rules.validated_address(list_address)
    with ctx.directory() as directory:
        enabled = directory.enable_members(target, members)
    click.echo(f"enabled {enabled} member(s) of {target}")


@member.command("import")
@click.argument("list_address")
@click.argument("csv_file", type=click.File("r", encoding="utf-8-sig"))
@pass_context
def member_import(ctx: Context, list_address: str, csv_file: Any) -> None:
    """Add the addresses in CSV_FILE to LIST_ADDRESS.

    The file has one address per row in its first column, or a header row with an
    ``email`` (or ``address``) column and an optional ``name`` column (display names).
    Nothing is added unless every row is valid.
    """
    target = rules.validated_address(list_address)
    found = read_member_csv(csv_file, getattr(csv_file, "name", "input"))
    with ctx.directory() as directory:
        result = directory.import_members(target, found)
    click.echo(f"imported {result.added} member(s) into {target}" + _already(result))


def read_member_csv(stream: Any, name: str) -> list[tuple[str, str]]:
    """The (address, display name) rows of a member CSV (see
    :func:`~mailflow.services.member_csv.read_member_rows`), every row checked here so
    that every bad row is reported at once."""
    found, problems = [], []
    for row in read_member_rows(stream, name):
        try:
            found.append((rules.validated_address(row.address),
                          rules.validated_member_name(row.name)))
        except InvalidInput as exc:
            problems.append(f"line {row.line}: {exc}")
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  … and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise InvalidInput(f"{name}: {len(problems)} invalid row(s), nothing imported:\n  "
                           f"{shown}{more}")
    return found


# -- sender entries: block and allow lists ------------------------------------------------

for_option = click.option(
    "--for", "target", metavar="ADDRESS|DOMAIN",
    help="a served domain or a list or alias address (default: every recipient)")
ls_for_option = click.option("--for", "target", metavar="ADDRESS|DOMAIN",
                             help="only the entries for this domain or address")
json_rules_option = click.option(
    "--json", "as_json", is_flag=True,
    help="a JSON array of objects with pattern, scope, for and created_at")


def _for_words(target: str) -> str:
    return f"for {target}" if target else "for every recipient"


def add_rule(ctx: Context, action: RuleAction, pattern: str, target: str | None) -> None:
    with ctx.directory() as directory:
        rule = directory.add_sender_rule(action, pattern, target)
    done = "blocked" if action is RuleAction.BLOCK else "allowed"
    click.echo(f"{done} {rule.pattern} {_for_words(rule.target)}")


def remove_rule(ctx: Context, action: RuleAction, pattern: str, target: str | None) -> None:
    wanted = rules.validated_pattern(pattern)
    scope = rules.validated_rule_target(target)
    with ctx.directory() as directory:
        directory.remove_sender_rule(action, wanted, scope)
    click.echo(f"removed {action.value} entry {wanted} {_for_words(scope)}")


def show_rules(ctx: Context, action: RuleAction, target: str | None, as_json: bool) -> None:
    with ctx.directory() as directory:
        found = directory.sender_rules(action, target)
    emit_rows(found, as_json,
              lambda r: {"pattern": r.pattern, "scope": r.scope.name.lower(),
                         "for": r.target or None, "created_at": r.created_at},
              lambda r: f"{r.pattern}\t{r.scope.name.lower()}\t{r.target}".rstrip())


def _rule_group(action: RuleAction, name: str, entry: str, summary: str, verb: str
                ) -> None:
    """``mailflow block`` and ``mailflow allow``: the same three commands each."""

    @cli.group(name, help=summary)
    def group() -> None:
        pass

    @group.command("add", help=f"{verb} senders matching PATTERN (an address; * and ? "
                   "are wildcards).")
    @click.argument("pattern")
    @for_option
    @pass_context
    def rule_add(ctx: Context, pattern: str, target: str | None) -> None:
        add_rule(ctx, action, pattern, target)

    @group.command("remove", help=f"Remove {entry} (the PATTERN and --for it was added "
                   "with).")
    @click.argument("pattern")
    @for_option
    @pass_context
    def rule_remove(ctx: Context, pattern: str, target: str | None) -> None:
        remove_rule(ctx, action, pattern, target)

    @group.command("ls", help=f"Show the {name} entries: global ones, then those for "
                   "domains, then addresses.")
    @ls_for_option
    @json_rules_option
    @pass_context
    def rule_ls(ctx: Context, target: str | None, as_json: bool) -> None:
        show_rules(ctx, action, target, as_json)


_rule_group(RuleAction.BLOCK, "block", "a block entry",
            "Senders whose mail is refused: mailflow block add '*@spam.example'.", "Block")
_rule_group(RuleAction.ALLOW, "allow", "an allow entry",
            "Senders taken despite a block entry of the same or a wider scope.", "Allow")


# -- auto-replies -----------------------------------------------------------------------

@cli.group()
def autoreply() -> None:
    """Out-of-office replies of lists and aliases (RFC 3834: never to lists or robots)."""


@autoreply.command("set")
@click.argument("address")
@click.option("--body", required=True,
              help="the reply's text; $sender, $subject and $address are filled in")
@click.option("--subject", default=rules.AUTOREPLY_DEFAULT_SUBJECT, show_default=True,
              help="the reply's subject (one line); the same names are filled in")
@click.option("--starts", help="first day (2026-12-24) or moment (2026-12-24T09:00), UTC")
@click.option("--ends", help="the reply stops at this day or moment, UTC")
@click.option("--once-per-days", type=int, default=7, show_default=True,
              help="answer each sender at most once in this many days")
@pass_context
def autoreply_set(ctx: Context, address: str, body: str, subject: str, starts: str | None,
                  ends: str | None, once_per_days: int) -> None:
    """Turn on (or replace) the auto-reply of the list or alias at ADDRESS."""
    with ctx.directory() as directory:
        reply = directory.set_autoreply(address, subject=subject, body=body, starts=starts,
                                        ends=ends, once_per_days=once_per_days)
    click.echo(f"auto-reply set for {reply.address}")


@autoreply.command("clear")
@click.argument("address")
@pass_context
def autoreply_clear(ctx: Context, address: str) -> None:
    """Turn the auto-reply of ADDRESS off."""
    with ctx.directory() as directory:
        had = directory.clear_autoreply(address)
    canonical = rules.validated_address(address)
    click.echo(f"auto-reply cleared for {canonical}" if had
               else f"{canonical} had no auto-reply")


def _moment(value: float | None) -> str | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds")


@autoreply.command("show")
@click.argument("address")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@pass_context
def autoreply_show(ctx: Context, address: str, as_json: bool) -> None:
    """Show the auto-reply of ADDRESS (exit status 3 if there is none)."""
    with ctx.directory() as directory:
        reply = directory.get_autoreply(address)
    if reply is None:
        fail(f"{rules.validated_address(address)} has no auto-reply; set one with "
             "`mailflow autoreply set`", EXIT_NOT_FOUND)
        return
    info = {"address": reply.address, "subject": reply.subject, "body": reply.body,
            "starts": _moment(reply.starts_at), "ends": _moment(reply.ends_at),
            "once_per_days": reply.once_per_days}
    if as_json:
        emit_json(info)
        return
    for key, value in info.items():
        click.echo(f"{key}: {'' if value is None else value}")


# -- filter rules and held messages ------------------------------------------------------

@cli.group("filter")
def filter_group() -> None:
    """Filter rules of a list or alias: tried in order, the first that matches decides."""


@filter_group.command("add")
@click.argument("address")
@click.option("--header", metavar="NAME", help="a header field; with --matches")
@click.option("--matches", metavar="REGEX", help="what the --header field must contain")
@click.option("--body", metavar="REGEX", help="what the decoded text parts must contain")
@click.option("--larger-than", type=int, metavar="BYTES", help="messages larger than this")
@click.option("--attachment", metavar="GLOB",
              help="an attachment whose MIME type or file name matches (* and ?)")
@click.option("--not-encrypted", is_flag=True,
              help="messages that are neither PGP/MIME nor S/MIME encrypted")
@click.option("--action", required=True,
              type=click.Choice(["reject", "discard", "hold", "tag", "strip"]),
              help="what a match does (strip: with --attachment only)")
@click.option("--text", default="", help="the reply of a reject; the reason of others")
@click.option("--add-header", metavar="'NAME: VALUE'",
              help="the field a tag rule adds to the copies")
@pass_context
def filter_add(ctx: Context, address: str, header: str | None, matches: str | None,
               body: str | None, larger_than: int | None, attachment: str | None,
               not_encrypted: bool, action: str, text: str, add_header: str | None) -> None:
    """Add a rule to ADDRESS with one condition, after its other rules."""
    with ctx.directory() as directory:
        rule = directory.add_filter_rule(
            address, action, text=text, header=header, matches=matches, body=body,
            larger_than=larger_than, attachment=attachment, not_encrypted=not_encrypted,
            add_header=add_header)
        number = len(directory.filter_rules(rule.target))
    click.echo(f"added filter rule {number} to {rule.target}: "
               f"{filters.describe(rule)} -> {rule.action.value}")


@filter_group.command("ls")
@click.argument("address")
@click.option("--json", "as_json", is_flag=True,
              help="a JSON array of objects with number, condition, header, argument, "
                   "action, text and created_at")
@pass_context
def filter_ls(ctx: Context, address: str, as_json: bool) -> None:
    """Show the rules of ADDRESS, numbered in the order they are tried."""
    with ctx.directory() as directory:
        found = directory.filter_rules(address)
    emit_rows(enumerate(found, 1), as_json,
              lambda nr: {"number": nr[0], "condition": nr[1].condition.value,
                          "header": nr[1].header or None, "argument": nr[1].argument or None,
                          "action": nr[1].action.value, "text": nr[1].text,
                          "created_at": nr[1].created_at},
              lambda nr: f"{nr[0]}\t{filters.describe(nr[1])}\t{nr[1].action.value}\t"
                         f"{nr[1].text}".rstrip())


@filter_group.command("remove")
@click.argument("address")
@click.argument("number", type=click.IntRange(1))
@pass_context
def filter_remove(ctx: Context, address: str, number: int) -> None:
    """Remove rule NUMBER (as `filter ls` shows it) of ADDRESS; later ones move up."""
    with ctx.directory() as directory:
        rule = directory.remove_filter_rule(address, number)
    click.echo(f"removed filter rule {number} of {rule.target}: {filters.describe(rule)}")


@cli.group()
def held() -> None:
    """Held posts (a posting policy or a filter rule held them) and their moderation."""


@held.command("ls")
@click.option("--list", "list_address", metavar="LIST",
              help="only the posts held for this list or alias")
@click.option("--json", "as_json", is_flag=True,
              help="a JSON array of objects with id, from, to, size, received_at, reason")
@pass_context
def held_ls(ctx: Context, list_address: str | None, as_json: bool) -> None:
    """Show the held messages, oldest first."""
    with ctx.directory() as directory:
        found = directory.held_messages(list_address)
    emit_rows(found, as_json,
              lambda m: {"id": m.id, "from": m.mail_from, "to": list(m.rcpt_tos),
                         "size": m.size, "received_at": m.received_at, "reason": m.reason},
              lambda m: f"{m.id}\t<{m.mail_from}>\t{','.join(m.rcpt_tos)}\t{m.size}\t"
                        f"{m.reason}")


@held.command("approve")
@click.argument("message_id", metavar="ID")
@click.option("--add-member", is_flag=True,
              help="add the post's author (its From: address) to the lists first, so "
                   "their next posts pass")
@pass_context
def held_approve(ctx: Context, message_id: str, add_member: bool) -> None:
    """Deliver a held message to its lists and aliases as if it had just arrived."""
    with ctx.moderation() as moderation:
        added = moderation.approve(message_id, add_member=add_member)
    click.echo(f"approved {message_id}" + (f"; author added to {', '.join(added)}"
                                           if added else ""))


@held.command("release")
@click.argument("message_id", metavar="ID")
@pass_context
def held_release(ctx: Context, message_id: str) -> None:
    """Deliver a held message (as `held approve`)."""
    with ctx.moderation() as moderation:
        moderation.approve(message_id)
    click.echo(f"released {message_id}")


@held.command("reject")
@click.argument("message_id", metavar="ID")
@click.option("--reason", default="",
              help=f"told to the author (at most {REASON_MAX_LENGTH} characters)")
@pass_context
def held_reject(ctx: Context, message_id: str, reason: str) -> None:
    """Refuse a held message: nobody gets it, its author is told (with the reason)."""
    with ctx.moderation() as moderation:
        author = moderation.reject(message_id, reason)
    click.echo(f"rejected {message_id}" + (f"; notice queued to {author}" if author
                                           else "; no author to tell"))


@held.command("discard")
@click.argument("message_id", metavar="ID")
@pass_context
def held_discard(ctx: Context, message_id: str) -> None:
    """Drop a held message silently: nobody gets it, nobody is told."""
    with ctx.moderation() as moderation:
        moderation.discard(message_id)
    click.echo(f"discarded {message_id}")


@cli.group("requests")
def requests_group() -> None:
    """Requests to join lists whose subscriptions the owners approve (--subscription
    approve)."""


@requests_group.command("ls")
@click.option("--list", "list_address", metavar="LIST", help="only the requests to this list")
@click.option("--json", "as_json", is_flag=True,
              help="a JSON array of objects with id, list, address, created_at")
@pass_context
def requests_ls(ctx: Context, list_address: str | None, as_json: bool) -> None:
    """Show the requests waiting, oldest first."""
    with ctx.subscriptions() as subscriptions:
        found = subscriptions.requests(list_address)
    emit_rows(found, as_json,
              lambda r: {"id": r.id, "list": r.list_address, "address": r.address,
                         "created_at": r.created_at},
              lambda r: f"{r.id}\t{r.list_address}\t{r.address}\t{_moment(r.created_at)}")


@requests_group.command("approve")
@click.argument("request_id", metavar="ID", type=int)
@pass_context
def requests_approve(ctx: Context, request_id: int) -> None:
    """Add the address that asked as a member, and mail it the list's welcome."""
    with ctx.subscriptions() as subscriptions:
        request = subscriptions.approve(request_id)
    click.echo(f"approved: {request.address} joined {request.list_address}; welcome queued")


@requests_group.command("reject")
@click.argument("request_id", metavar="ID", type=int)
@click.option("--reason", default="",
              help=f"told to the address (at most {REASON_MAX_LENGTH} characters)")
@pass_context
def requests_reject(ctx: Context, request_id: int, reason: str) -> None:
    """Refuse a request: the address is told (with the reason)."""
    with ctx.subscriptions() as subscriptions:
        request = subscriptions.reject(request_id, reason)
    click.echo(f"rejected: {request.address} for {request.list_address}; notice queued")


# -- bounces and suppressions -----------------------------------------------------------

@cli.group()
def bounces() -> None:
    """Bounces and complaints counted against list members."""


@bounces.command("ls")
@click.option("--list", "list_address", help="only the bounces of this list")
@click.option("--json", "as_json", is_flag=True,
              help="a JSON array of objects with list, address, kind, source, counted, "
                   "detail, at")
@pass_context
def bounces_ls(ctx: Context, list_address: str | None, as_json: bool) -> None:
    """Show the newest bounces (at most 1,000), newest first."""
    with ctx.directory() as directory:
        found = directory.bounce_events(list_address)
    emit_rows(found, as_json,
              lambda b: {"list": b.list_address, "address": b.address, "kind": b.kind,
                         "source": b.source, "counted": b.counted, "detail": b.detail,
                         "at": b.created_at},
              lambda b: f"{_moment(b.created_at)}\t{b.list_address}\t<{b.address}>\t"
                        f"{b.kind}\t{b.source}\t{'counted' if b.counted else 'not counted'}")


@cli.group()
def suppress() -> None:
    """Addresses no list sends to (every list, or one with --list)."""


suppress_list_option = click.option(
    "--list", "list_address", help="for this list only (default: every list)")


@suppress.command("add")
@click.argument("address")
@suppress_list_option
@click.option("--reason", default="", help="a note kept with the entry")
@pass_context
def suppress_add(ctx: Context, address: str, list_address: str | None, reason: str) -> None:
    """Send ADDRESS nothing from now on (checked when a message is expanded)."""
    with ctx.directory() as directory:
        added = directory.suppress(address, list_address, reason)
    where = f" for {list_address}" if list_address else ""
    click.echo(f"suppressed {address}{where}" if added else f"{address} was suppressed already")


@suppress.command("remove")
@click.argument("address")
@suppress_list_option
@pass_context
def suppress_remove(ctx: Context, address: str, list_address: str | None) -> None:
    """Send ADDRESS mail again."""
    with ctx.directory() as directory:
        directory.unsuppress(address, list_address)
    click.echo(f"removed the suppression of {address}")


@suppress.command("ls")
@suppress_list_option
@click.option("--json", "as_json", is_flag=True,
              help="a JSON array of objects with address, list ('' for every list), "
                   "reason, created_at")
@pass_context
def suppress_ls(ctx: Context, list_address: str | None, as_json: bool) -> None:
    """Show the suppressed addresses."""
    with ctx.directory() as directory:
        found = directory.suppressions(list_address)
    emit_rows(found, as_json,
              lambda e: {"address": e.address, "list": e.target, "reason": e.reason,
                         "created_at": e.created_at},
              lambda e: f"{e.address}\t{e.target or '(every list)'}\t{e.reason}")
# -- DKIM keys --------------------------------------------------------------------------

@cli.group()
def dkim() -> None:
    """DKIM signing keys: every copy for a list or alias of a domain with a key is signed."""


def _dns_record(key: DkimKey) -> str:
    """The TXT record in zone-file form, its value cut into strings of 255 characters."""
    value = key.dns_text
    strings = " ".join(f'"{value[i:i + 255]}"' for i in range(0, len(value), 255))
    return f"{key.dns_name}. IN TXT ( {strings} )"


@dkim.command("keygen")
@click.argument("domain")
@click.option("--selector", help="the DNS selector (default: mf and today's date, UTC)")
@click.option("--replace", is_flag=True,
              help="replace the domain's key (the old record may stay published)")
@pass_context
def dkim_keygen(ctx: Context, domain: str, selector: str | None, replace: bool) -> None:
    """Make a 2048-bit RSA key for DOMAIN and print the DNS TXT record to publish."""
    with ctx.directory() as directory:
        key = directory.create_dkim_key(domain, selector, replace=replace)
    click.echo(f"created a DKIM key for {key.domain} (selector {key.selector}); copies "
               "are signed from now on; publish this DNS record:")
    click.echo(_dns_record(key))


@dkim.command("ls")
@click.option("--json", "as_json", is_flag=True,
              help="a JSON array of objects with domain, selector, created_at, dns_name "
                   "and dns_txt")
@pass_context
def dkim_ls(ctx: Context, as_json: bool) -> None:
    """Show the domains that have a key, with the DNS record each needs."""
    with ctx.directory() as directory:
        found = directory.dkim_keys()
    emit_rows(found, as_json,
              lambda k: {"domain": k.domain, "selector": k.selector,
                         "created_at": k.created_at, "dns_name": k.dns_name,
                         "dns_txt": k.dns_text},
              lambda k: f"{k.domain}\t{k.selector}\t{_moment(k.created_at)}\t"
                        f"{_dns_record(k)}")


@dkim.command("remove")
@click.argument("domain")
@pass_context
def dkim_remove(ctx: Context, domain: str) -> None:
    """Stop signing DOMAIN's copies and forget its key."""
    with ctx.directory() as directory:
        key = directory.remove_dkim_key(domain)
    click.echo(f"removed the DKIM key of {key.domain} (selector {key.selector})")


# -- queue ------------------------------------------------------------------------------

@cli.group()
def queue() -> None:
    """The send queue."""


DELIVERY_STATES = [s.value for s in DeliveryStatus]


def _selection_options(f: F) -> F:
    """The options that pick deliveries, shared by ``queue show`` and the actions."""
    for option in reversed([
        click.option("--status", "statuses", multiple=True, type=click.Choice(DELIVERY_STATES),
                     help="only deliveries in this state (repeatable)"),
        click.option("--list", "list_address", help="only deliveries through this list or alias"),
        click.option("--domain", help="only deliveries to recipients of this domain"),
        click.option("--older-than", "older_than",
                     help="only deliveries created this long ago or more (15m, 2h, 7d)"),
        click.argument("ids", nargs=-1, metavar="[ID]..."),
    ]):
        f = option(f)
    return f


def _selection(statuses: tuple[str, ...], list_address: str | None, domain: str | None,
               older_than: str | None, ids: tuple[str, ...], now: float) -> QueueSelection:
    return selection_of(statuses, list_address, domain, older_than, ids, now)


def _delivery_json(r: DeliveryRow) -> dict[str, Any]:
    return {"id": r.id, "message_id": r.message_id, "list": r.list_address,
            "recipient": r.recipient, "status": r.status, "attempts": r.attempts,
            "next_attempt_at": r.due_at, "created_at": r.created_at,
            "updated_at": r.updated_at, "last_reply": r.last_reply}


@queue.command("show")
@click.option("--json", "as_json", is_flag=True,
              help="counts by delivery status and the most recent deliveries")
@click.option("--limit", type=click.IntRange(1, 100000), default=100, show_default=True)
@_selection_options
@pass_context
def queue_show(ctx: Context, as_json: bool, limit: int, statuses: tuple[str, ...],
               list_address: str | None, domain: str | None, older_than: str | None,
               ids: tuple[str, ...]) -> None:
    """Show how many deliveries are in each state, and the latest ones (those IDs, or
    those the options pick)."""
    with ctx.repository() as repo:
        operations = QueueOperations(OperationsStore(repo.engines), time.time)
        selection = _selection(statuses, list_address, domain, older_than, ids, time.time())
        counts = repo.delivery_counts()
        messages = repo.message_counts()
        rows = operations.show(selection, limit)
    if as_json:
        emit_json({"counts": counts, "messages": messages,
                   "deliveries": [_delivery_json(r) for r in rows]})
        return
    click.echo("deliveries: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    click.echo("messages:   " + ", ".join(f"{k} {v}" for k, v in messages.items()))
    for r in rows:
        click.echo(f"{r.id}\t{r.message_id}\t{r.recipient}\t{r.status}\t"
                   f"attempts={r.attempts}\t{r.last_reply or ''}")


def _queue_action(name: str, summary: str, done: str) -> None:
    """``mailflow queue NAME``: one action of :class:`QueueOperations` on a selection."""

    @queue.command(name, help=summary)
    @_selection_options
    @click.option("--yes", is_flag=True, help="do not ask: act on every delivery selected")
    @pass_context
    def command(ctx: Context, statuses: tuple[str, ...], list_address: str | None,
                domain: str | None, older_than: str | None, ids: tuple[str, ...],
                yes: bool) -> None:
        with ctx.repository() as repo:
            operations = QueueOperations(OperationsStore(repo.engines), time.time)
            selection = _selection(statuses, list_address, domain, older_than, ids,
                                   time.time())
            try:
                change = operations.act(name, selection, confirmed=yes)
            except ConfirmationNeeded as exc:
                fail(f"this selects {exc.count} deliveries; add --yes to delete them all",
                     spec(InvalidInput).cli_exit)
                return
        left = f" ({change.skipped} selected left alone: in flight or not in a state to " \
               f"{name})" if change.skipped else ""
        click.echo(f"{done} {change.changed} deliveries{left}")


_queue_action("retry", "Make queued and deferred deliveries due now.", "retried")
_queue_action("hold", "Keep queued and deferred deliveries from being sent until released.",
              "held")
_queue_action("release", "Queue held deliveries again, due now.", "released")
_queue_action("delete", "Never send these queued, deferred or held deliveries (asks for "
              "--yes when more than one is selected).", "deleted")


# -- trace ------------------------------------------------------------------------------

@cli.command()
@click.argument("query")
@click.option("--since", help="messages received after this: 2h (ago) or 2026-12-24T09:00")
@click.option("--until", help="messages received before this (same forms)")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True,
              help="at most this many messages, the newest")
@click.option("--json", "as_json", is_flag=True, help="a JSON array of messages with steps")
@pass_context
def trace(ctx: Context, query: str, since: str | None, until: str | None, limit: int,
          as_json: bool) -> None:
    """Show what happened to the messages QUERY names: a queue id, a Message-ID, or a
    sender's or recipient's address."""
    now = time.time()
    with ctx.repository() as repo:
        result = TraceService(OperationsStore(repo.engines)).trace(
            query, since=None if since is None else parse_moment(since, now),
            until=None if until is None else parse_moment(until, now), limit=limit)
    if as_json:
        emit_json([_trace_json(t) for t in result.traces])
        return
    if not result.traces:
        fail(f"no message matches {query!r}" + ("" if since or until else
                                                 " (try --since to widen the search)"),
             EXIT_NOT_FOUND)
    for number, t in enumerate(result.traces):
        if number:
            click.echo("")
        m = t.message
        click.echo(f"{m.id}  message-id {m.header_id or '-'}  from <{m.mail_from}>  "
                   f"{m.status.value}")
        for step in t.steps:
            who = f" {step.recipient}" if step.recipient else ""
            click.echo(f"  {_moment(step.at)}  {step.kind:<9}{who}  {step.detail}")
        for d in t.deliveries:
            click.echo(f"  now: {d.recipient} {d.status} after {d.attempts} attempt(s)"
                       + (f": {d.last_reply}" if d.last_reply else ""))
    if result.truncated:
        click.echo(f"(more messages match: showing the newest {limit}; see --limit)",
                   err=True)


def _trace_json(t: MessageTrace) -> dict[str, Any]:
    m = t.message
    return {"id": m.id, "message_id": m.header_id, "from": m.mail_from,
            "to": list(m.rcpt_tos), "size": m.size, "received_at": m.received_at,
            "peer": m.peer, "helo": m.helo, "protocol": m.protocol, "status": m.status.value,
            "steps": [{"at": s.at, "kind": s.kind, "detail": s.detail,
                       "recipient": s.recipient, "delivery_id": s.delivery_id}
                      for s in t.steps],
            "deliveries": [_delivery_json(d) for d in t.deliveries]}
# -- users and API tokens (docs/api.md) ---------------------------------------------------

CLI_ACTOR = "cli"


@cli.group()
def user() -> None:
    """Users of the REST API: site admins, list owners and moderators."""


def _read_password(from_stdin: bool) -> str:
    """From a prompt (asked twice, not echoed), or the first line of standard input."""
    if from_stdin or not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    password: str = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    return password


@user.command("add")
@click.argument("email")
@click.option("--admin", is_flag=True, help="a site admin: may do everything")
@click.option("--password-stdin", is_flag=True,
              help="read the password from the first line of standard input")
@pass_context
def user_add(ctx: Context, email: str, admin: bool, password_stdin: bool) -> None:
    """Add a user who logs in as EMAIL (the password is asked for, never an argument)."""
    password = _read_password(password_stdin)
    with ctx.access() as access:
        added = access.add_user(email, password, admin=admin)
        access.record(CLI_ACTOR, "user.add", added.email, "admin" if admin else "")
    click.echo(f"added {'site admin' if admin else 'user'} {added.email}")


@user.command("ls")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@pass_context
def user_ls(ctx: Context, as_json: bool) -> None:
    """Show the users."""
    with ctx.access() as access:
        found = access.users()
    emit_rows(found, as_json,
              lambda u: {"email": u.email, "is_admin": u.is_admin, "created_at": u.created_at},
              lambda u: u.email + ("\tadmin" if u.is_admin else ""))


@user.command("remove")
@click.argument("email")
@pass_context
def user_remove(ctx: Context, email: str) -> None:
    """Remove a user, their tokens and their roles."""
    with ctx.access() as access:
        access.remove_user(email)
        access.record(CLI_ACTOR, "user.remove", email)
    click.echo(f"removed user {email}")


@user.command("role")
@click.argument("email")
@click.argument("list_address")
@click.option("--role", type=click.Choice([r.value for r in ListRole] + ["none"]),
              required=True, help="owner, moderator, or none to take the role away")
@pass_context
def user_role(ctx: Context, email: str, list_address: str, role: str) -> None:
    """Make EMAIL owner or moderator of LIST_ADDRESS (or neither): the role of EMAIL on
    the list's roster (added disabled, receiving nothing, if it is not a member)."""
    with ctx.access() as access:
        access.set_list_role(email, list_address, None if role == "none" else role)
        access.record(CLI_ACTOR, f"role.{'remove' if role == 'none' else role}",
                      list_address, email)
    click.echo(f"{email} is {'no longer owner or moderator of' if role == 'none' else role + ' of'}"
               f" {list_address}")


@cli.group()
def token() -> None:
    """API tokens (``Authorization: Bearer``)."""


@token.command("create")
@click.option("--user", "email", metavar="EMAIL",
              help="the token acts as this user (default: a site token, acting as admin)")
@click.option("--scope", type=click.Choice([s.value for s in TokenScope]), default="write",
              show_default=True, help="read: only GET requests")
@click.option("--label", default="", help="what the token is for, shown in `token ls`")
@pass_context
def token_create(ctx: Context, email: str | None, scope: str, label: str) -> None:
    """Create a token and print it: it is shown this once, and stored only hashed."""
    with ctx.access() as access:
        made, secret = access.create_token(email, scope, label)
        access.record(CLI_ACTOR, "token.create", made.user_email or "",
                      f"id={made.id} scope={made.scope.value}")
    click.echo(secret)
    click.echo(f"token {made.id} ({made.scope.value}"
               + (f", as {made.user_email}" if made.user_email else ", site token")
               + "): keep it now, it cannot be shown again", err=True)


@token.command("ls")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@pass_context
def token_ls(ctx: Context, as_json: bool) -> None:
    """Show the tokens (never their secrets)."""
    with ctx.access() as access:
        found = access.tokens()
    emit_rows(found, as_json,
              lambda t: {"id": t.id, "user": t.user_email, "scope": t.scope.value,
                         "label": t.label, "created_at": t.created_at},
              lambda t: f"{t.id}\t{t.scope.value}\t{t.user_email or '(site)'}\t{t.label}")


@token.command("revoke")
@click.argument("token_id", type=int)
@pass_context
def token_revoke(ctx: Context, token_id: int) -> None:
    """Revoke a token: requests with it are refused from now on."""
    with ctx.access() as access:
        access.revoke_token(token_id)
        access.record(CLI_ACTOR, "token.revoke", str(token_id))
    click.echo(f"revoked token {token_id}")


def _command(argv: list[str]) -> str | None:
    """The subcommand named on a command line (skipping the global --config option)."""
    args = iter(argv)
    for arg in args:
        if arg in ("--config", "-c"):
            next(args, None)
        elif not arg.startswith("-"):
            return arg
    return None


def main() -> None:
    if _command(sys.argv[1:]) == "pipe":
        # A pipe must never make Postfix bounce mail over a usage or set-up mistake.
        try:
            cli.main(standalone_mode=False)
        except click.ClickException as exc:
            print(f"4.3.5 mailflow pipe: {exc.format_message()}", file=sys.stderr)
            sys.exit(EX_TEMPFAIL)
        except (click.exceptions.Abort, KeyboardInterrupt):
            print("4.3.0 mailflow pipe: interrupted", file=sys.stderr)
            sys.exit(EX_TEMPFAIL)
        return
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        fail("aborted", EXIT_FAILURE)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except MailflowError as exc:
        fail(f"{exc}{hint(exc, _command(sys.argv[1:]))}", spec(exc).cli_exit)
    except StoreError as exc:
        fail(f"database error: {exc}", EXIT_FAILURE)
    except SQLAlchemyError as exc:
        fail(f"database error: {getattr(exc, 'orig', None) or exc}", EXIT_FAILURE)
    except OSError as exc:
        fail(f"{exc.strerror or exc}: {getattr(exc, 'filename', '') or ''}".rstrip(": "),
             EXIT_FAILURE)


if __name__ == "__main__":
    main()
