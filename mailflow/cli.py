"""The ``mailflow`` command: set up, run and manage a relay.

Management commands talk to the store directly (SQLite file or PostgreSQL), so they work
whether or not the relay is running, and a running relay sees their changes at once.
Errors go to stderr with a non-zero exit status and say what to do next.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from mailflow import __version__, addresses
from mailflow.config import Settings, load_settings
from mailflow.errors import EX_TEMPFAIL, Conflict, InvalidInput, MailflowError, NotFound, spec
from mailflow.memory import release_large_blocks
from mailflow.model import AddedMembers, ForwardStyle, ListKind, ListRole, RuleAction, TokenScope
from mailflow.pipeline.accept import filters
from mailflow.services import directory as rules
from mailflow.services.access import AccessService
from mailflow.services.directory import DirectoryService
from mailflow.services.member_csv import read_member_rows
from mailflow.store import Repository, create_cli_engines
from mailflow.store.access import AccessRepository
from mailflow.store.engine import describe_database_error, normalize_url, sqlite_path

F = TypeVar("F", bound=Callable[..., Any])

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
    def access(self) -> Iterator[AccessService]:
        with self.repository() as repo:
            yield AccessService(AccessRepository(repo.engines))


pass_context = click.make_pass_decorator(Context)


def fail(message: str, code: int = EXIT_FAILURE) -> None:
    click.echo(f"mailflow: error: {message}", err=True)
    sys.exit(code)


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


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
@pass_context
def serve(ctx: Context, initialise_store: bool) -> None:
    """Run the relay (SMTP/LMTP listeners, pipeline, scheduler, HTTP) until stopped."""
    from mailflow.app import serve as run_relay
    from mailflow.services.installation import require_store

    settings = ctx.settings
    if not initialise_store:
        # A wrong data directory must not become an empty store that refuses every
        # recipient (senders' mail would bounce); the relay's start-up then migrates it.
        with store_errors(settings.resolved_database_url):
            require_store(settings)
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-line debug
    release_large_blocks()  # message-sized blocks go back to the system when freed
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every POSIX system
        asyncio.run(run_relay(settings))
    else:
        with store_errors(settings.resolved_database_url):
            uvloop.run(run_relay(settings))


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
    if as_json:
        emit_json([{"name": d.name, "created_at": d.created_at} for d in domains])
    else:
        for d in domains:
            click.echo(d.name)


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
@pass_context
def list_update(ctx: Context, address: str, kind: str | None, name: str | None,
                priority: int | None, forward_style: str | None) -> None:
    """Change the kind, display name, priority or forward style of the list or alias at
    ADDRESS."""
    if kind is None and name is None and priority is None and forward_style is None:
        raise click.UsageError("nothing to update: give --name, --priority, --kind or "
                               "--forward-style")
    with ctx.directory() as directory:
        updated = directory.update_list(address, kind=kind, name=name, priority=priority,
                                        forward_style=forward_style)
    click.echo(f"updated {updated.kind.value} {updated.address}")


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
            "members": len(roster),
            "active_members": sum(1 for m in roster if m.status.value == "active"),
            "bounces_address": found.bounces_address, "list_id": found.list_id}
    if as_json:
        emit_json(info)
    else:
        for key, value in info.items():
            click.echo(f"{key}: {value}")


@list_group.command("ls")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@pass_context
def list_ls(ctx: Context, as_json: bool) -> None:
    """Show every list and alias with its member count."""
    with ctx.directory() as directory:
        rows = directory.lists()
    if as_json:
        emit_json([{"address": lst.address, "kind": lst.kind.value, "name": lst.name,
                    "members": n} for lst, n in rows])
        return
    for lst, n in rows:
        click.echo(f"{lst.address}\t{lst.kind.value}\t{n} member(s)\t{lst.name}")


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
@pass_context
def member_add(ctx: Context, list_address: str, members: tuple[str, ...], name: str) -> None:
    """Add MEMBERS to LIST_ADDRESS (alias targets may be in any domain)."""
    target = rules.validated_address(list_address)
    with ctx.directory() as directory:
        result = directory.add_members(target, members, name=name)
    click.echo(f"added {result.added} member(s) to {target}" + _already(result))


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


@member.command("list")
@click.argument("list_address")
@click.option("--json", "as_json", is_flag=True,
              help="a JSON array of objects with address, name, status and created_at")
@pass_context
def member_list(ctx: Context, list_address: str, as_json: bool) -> None:
    """Show the members of LIST_ADDRESS."""
    with ctx.directory() as directory:
        roster = directory.members(list_address)
    if as_json:
        emit_json([{"address": m.address, "name": m.name, "status": m.status.value,
                    "created_at": m.created_at} for m in roster])
        return
    for m in roster:
        click.echo(f"{m.address}\t{m.status.value}" + (f"\t{m.name}" if m.name else ""))


member.add_command(member_list, "ls")  # as `list ls`


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
    if as_json:
        emit_json([{"pattern": r.pattern, "scope": r.scope.name.lower(),
                    "for": r.target or None, "created_at": r.created_at} for r in found])
        return
    for r in found:
        click.echo(f"{r.pattern}\t{r.scope.name.lower()}\t{r.target}".rstrip())


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
              type=click.Choice(["reject", "discard", "hold"]), help="what a match does")
@click.option("--text", default="", help="the reply of a reject; the reason of others")
@pass_context
def filter_add(ctx: Context, address: str, header: str | None, matches: str | None,
               body: str | None, larger_than: int | None, attachment: str | None,
               not_encrypted: bool, action: str, text: str) -> None:
    """Add a rule to ADDRESS with one condition, after its other rules."""
    with ctx.directory() as directory:
        rule = directory.add_filter_rule(
            address, action, text=text, header=header, matches=matches, body=body,
            larger_than=larger_than, attachment=attachment, not_encrypted=not_encrypted)
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
    if as_json:
        emit_json([{"number": n, "condition": r.condition.value, "header": r.header or None,
                    "argument": r.argument or None, "action": r.action.value,
                    "text": r.text, "created_at": r.created_at}
                   for n, r in enumerate(found, 1)])
        return
    for n, r in enumerate(found, 1):
        click.echo(f"{n}\t{filters.describe(r)}\t{r.action.value}\t{r.text}".rstrip())


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
    """Messages a filter rule holds, until released or discarded."""


@held.command("ls")
@click.option("--json", "as_json", is_flag=True,
              help="a JSON array of objects with id, from, to, size, received_at, reason")
@pass_context
def held_ls(ctx: Context, as_json: bool) -> None:
    """Show the held messages, oldest first."""
    with ctx.directory() as directory:
        found = directory.held_messages()
    if as_json:
        emit_json([{"id": m.id, "from": m.mail_from, "to": list(m.rcpt_tos), "size": m.size,
                    "received_at": m.received_at, "reason": m.reason} for m in found])
        return
    for m in found:
        click.echo(f"{m.id}\t<{m.mail_from}>\t{','.join(m.rcpt_tos)}\t{m.size}\t{m.reason}")


@held.command("release")
@click.argument("message_id", metavar="ID")
@pass_context
def held_release(ctx: Context, message_id: str) -> None:
    """Deliver a held message to its lists and aliases as if it had just arrived."""
    with ctx.directory() as directory:
        directory.release_held(message_id)
    click.echo(f"released {message_id}")


@held.command("discard")
@click.argument("message_id", metavar="ID")
@pass_context
def held_discard(ctx: Context, message_id: str) -> None:
    """Drop a held message: nobody gets it."""
    with ctx.directory() as directory:
        directory.discard_held(message_id)
    click.echo(f"discarded {message_id}")


# -- queue ------------------------------------------------------------------------------

@cli.group()
def queue() -> None:
    """The send queue."""


@queue.command("show")
@click.option("--json", "as_json", is_flag=True,
              help="counts by delivery status and the most recent deliveries")
@click.option("--status", type=click.Choice(["queued", "in_flight", "deferred", "delivered",
                                             "failed"]), help="only deliveries in this state")
@click.option("--limit", type=click.IntRange(1, 100000), default=100, show_default=True)
@pass_context
def queue_show(ctx: Context, as_json: bool, status: str | None, limit: int) -> None:
    """Show how many deliveries are in each state, and the latest ones."""
    with ctx.repository() as repo:
        counts = repo.delivery_counts()
        messages = repo.message_counts()
        rows = repo.list_deliveries(limit, status)
    if as_json:
        emit_json({
            "counts": counts,
            "messages": messages,
            "deliveries": [
                {"id": r.id, "message_id": r.message_id, "list": r.list_address,
                 "recipient": r.recipient, "status": r.status, "attempts": r.attempts,
                 "next_attempt_at": r.due_at, "created_at": r.created_at,
                 "updated_at": r.updated_at, "last_reply": r.last_reply}
                for r in rows],
        })
        return
    click.echo("deliveries: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    click.echo("messages:   " + ", ".join(f"{k} {v}" for k, v in messages.items()))
    for r in rows:
        click.echo(f"{r.id}\t{r.message_id}\t{r.recipient}\t{r.status}\t"
                   f"attempts={r.attempts}\t{r.last_reply or ''}")


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
    if as_json:
        emit_json([{"email": u.email, "is_admin": u.is_admin, "created_at": u.created_at}
                   for u in found])
        return
    for u in found:
        click.echo(u.email + ("\tadmin" if u.is_admin else ""))


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
    """Make EMAIL owner or moderator of LIST_ADDRESS (or neither)."""
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
    if as_json:
        emit_json([{"id": t.id, "user": t.user_email, "scope": t.scope.value,
                    "label": t.label, "created_at": t.created_at} for t in found])
        return
    for t in found:
        click.echo(f"{t.id}\t{t.scope.value}\t{t.user_email or '(site)'}\t{t.label}")


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
