"""The ``mailflow`` command: set up, run and manage a relay.

Management commands talk to the store directly (SQLite file or PostgreSQL), so they work
whether or not the relay is running, and a running relay sees their changes at once.
Errors go to stderr with a non-zero exit status and say what to do next.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from mailflow import __version__
from mailflow.config import Settings, load_settings
from mailflow.errors import EX_TEMPFAIL, Conflict, InvalidInput, MailflowError, NotFound, spec
from mailflow.memory import release_large_blocks
from mailflow.model import ListKind
from mailflow.services import directory as rules
from mailflow.services.directory import DirectoryService
from mailflow.store import Repository, create_cli_engines
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
            click.echo(f"added domain {added.name}")


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
              show_default=True, help="list: members get decorated copies; alias: forward")
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
@pass_context
def list_update(ctx: Context, address: str, kind: str | None, name: str | None,
                priority: int | None) -> None:
    """Change the kind, display name or priority of the list or alias at ADDRESS."""
    if kind is None and name is None and priority is None:
        raise click.UsageError("nothing to update: give --name, --priority or --kind")
    with ctx.directory() as directory:
        updated = directory.update_list(address, kind=kind, name=name, priority=priority)
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
            "priority": found.priority, "members": len(roster),
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
@pass_context
def member_add(ctx: Context, list_address: str, members: tuple[str, ...]) -> None:
    """Add MEMBERS to LIST_ADDRESS (alias targets may be in any domain)."""
    target = rules.validated_address(list_address)
    with ctx.directory() as directory:
        added, existing = directory.add_members(target, members)
    click.echo(f"added {added} member(s) to {target}"
               + (f"; {existing} already there" if existing else ""))


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
              help="a JSON array of objects with address, status and created_at")
@pass_context
def member_list(ctx: Context, list_address: str, as_json: bool) -> None:
    """Show the members of LIST_ADDRESS."""
    with ctx.directory() as directory:
        roster = directory.members(list_address)
    if as_json:
        emit_json([{"address": m.address, "status": m.status.value,
                    "created_at": m.created_at} for m in roster])
        return
    for m in roster:
        click.echo(f"{m.address}\t{m.status.value}")


@member.command("import")
@click.argument("list_address")
@click.argument("csv_file", type=click.File("r", encoding="utf-8-sig"))
@pass_context
def member_import(ctx: Context, list_address: str, csv_file: Any) -> None:
    """Add the addresses in CSV_FILE to LIST_ADDRESS.

    The file has one address per row in its first column, or a header row with an
    ``address`` (or ``email``) column.  Nothing is added unless every row is valid.
    """
    target = rules.validated_address(list_address)
    found = read_member_csv(csv_file, getattr(csv_file, "name", "input"))
    with ctx.directory() as directory:
        added, existing = directory.add_members(target, found)
    click.echo(f"imported {added} member(s) into {target}"
               + (f"; {existing} already there" if existing else ""))


HEADER_KEYS = ("email", "address", "e-mail")


def read_member_csv(stream: Any, name: str) -> list[str]:
    """The addresses of a member CSV: a header row (``email``, optional ``name``) or none.

    A file without a header has an address in the first cell of its first row; a first
    row without an ``@`` is a header, and one without an email column is refused with the
    header expected.  Members have no display name in the store, so a ``name`` column is
    read past.
    """
    try:
        rows = [row for row in csv.reader(stream) if any(cell.strip() for cell in row)]
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{name} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at "
                           f"offset {exc.start}); save it as UTF-8 CSV and import again"
                           ) from exc
    except csv.Error as exc:
        raise InvalidInput(f"{name} is not a CSV file: {exc}") from exc
    if not rows:
        raise InvalidInput(f"{name} has no rows")
    header = [cell.strip().lower() for cell in rows[0]]
    column, start = 0, 0
    for key in HEADER_KEYS:
        if key in header:
            column, start = header.index(key), 1
            break
    else:
        if "@" not in (rows[0][0] if rows[0] else ""):
            shown = ",".join(cell.strip() for cell in rows[0])
            raise InvalidInput(f"{name}: header row {shown!r} has no email column; expected "
                               "a header `email` or `email,name` (or no header, one address "
                               "per row in the first column)")
    found, problems = [], []
    for number, row in enumerate(rows[start:], start=start + 1):
        cell = row[column].strip() if column < len(row) else ""
        try:
            found.append(rules.validated_address(cell))
        except InvalidInput as exc:
            problems.append(f"line {number}: {exc}")
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  … and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise InvalidInput(f"{name}: {len(problems)} invalid row(s), nothing imported:\n  "
                           f"{shown}{more}")
    return found


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
