"""A private, throw-away Postfix instance on loopback, for end-to-end tests.

``with PostfixInstance() as postfix: ...`` builds a complete Postfix configuration in a
temporary folder (its own ``config_directory``, ``queue_directory`` and
``data_directory``), starts it with ``postfix -c DIR start`` and stops it again.  It never
touches the system's ``/etc/postfix`` configuration or queue, never binds port 25, and
listens on ``127.0.0.1`` only (``inet_interfaces = loopback-only``).  The smtpd listens
on :attr:`PostfixInstance.smtp_port`, a free loopback port.

Configure before :meth:`PostfixInstance.start`: :meth:`main_settings` (main.cf),
:meth:`add_master_entry` (master.cf), :meth:`write_file` (maps, scripts) and
:meth:`pipe_wrapper` (a pipe(8) command with its environment).  While it runs:
:meth:`queue` (``postqueue -j``), :meth:`flush`, :meth:`log` and :meth:`wait_for_log`
(the ``maillog_file``).

Gotchas this class handles, learned the hard way:

* The temporary folder must be reachable by the ``postfix`` user and by the pipe(8)
  user, so it is made with mode 0755 outside pytest's 0700 ``/tmp/pytest-of-*``.
* ``maillog_file`` must start with one of ``maillog_file_prefixes`` (default ``/var,
  /dev/stdout``): the prefixes are set to the temporary folder, and ``master.cf`` has the
  ``postlog`` service that ``postfix start`` insists on.
* pipe(8) refuses to run commands as root (or as ``mail_owner``), so commands run as
  ``nobody``.  The interpreter must be executable by that user: a pyenv Python under
  ``/root`` is not.  :func:`python_for_user` finds one that is (see there).
* pipe(8) passes only ``export_environment`` to the command; :meth:`pipe_wrapper` writes a
  shell script that exports the variables and execs the command instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailflow.testing.ports import (
    ATTEMPTS,
    address_in_use,
    free_port,
    listening_ports,
    wait_for_port,
)

POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"
POSTQUEUE = "/usr/sbin/postqueue"
POSTSUPER = "/usr/sbin/postsuper"
POSTMAP = "/usr/sbin/postmap"
REQUIRED_BINARIES = (POSTFIX, POSTCONF, POSTQUEUE, POSTSUPER, POSTMAP)
PIPE_USER = "nobody"

# Every daemon runs unchrooted (the "n" in the fifth column): a chroot would need copies
# of /etc files inside the temporary queue directory.
BASE_MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command + args
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def postfix_problem() -> str | None:
    """Why a private Postfix cannot run here, or None if it can."""
    missing = [path for path in REQUIRED_BINARIES if not os.access(path, os.X_OK)]
    if missing:
        return f"Postfix is not installed (missing {', '.join(missing)})"
    if os.geteuid() != 0:
        return "a private Postfix instance needs root (postfix -c DIR start)"
    for user in ("postfix", PIPE_USER):
        try:
            pwd.getpwnam(user)
        except KeyError:
            return f"user {user!r} does not exist"
    return None


def run_as_user_works(argv: Sequence[str], user: str, env: Mapping[str, str] | None = None,
                      timeout: float = 30.0) -> bool:
    """Whether ``argv`` exits 0 when run as ``user`` (from root) in a neutral folder."""
    entry = pwd.getpwnam(user)
    try:
        result = subprocess.run(list(argv), user=entry.pw_uid, group=entry.pw_gid,
                                extra_groups=[], env=dict(env or {}), cwd="/",
                                capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0


@dataclass(frozen=True, slots=True)
class PythonCommand:
    """An interpreter a given user can run ``-m mailflow`` with, plus its environment."""

    argv: tuple[str, ...]
    env: Mapping[str, str]


def python_for_user(user: str = PIPE_USER, scratch: Path | None = None
                    ) -> PythonCommand | None:
    """A Python that ``user`` can run ``python -m mailflow`` with, or None.

    First ``sys.executable``.  A venv made from a pyenv or other interpreter under
    ``/root`` (mode 0700) is not executable for ``nobody``; then the system interpreter
    of the same major.minor version (same ABI, so the venv's compiled wheels load) with
    the project folder and the venv's site-packages on ``PYTHONPATH``.  If the checkout
    itself is out of the user's reach (a clone under ``/root``), and ``scratch`` (a
    folder the user can read) is given, the package and site-packages are copied there.
    """
    env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
    probe = ("-c", "import mailflow.cli")
    if run_as_user_works([sys.executable, *probe], user, env):
        return PythonCommand((sys.executable,), env)
    import mailflow

    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    project = str(Path(mailflow.__file__).resolve().parent.parent)
    site_packages = sysconfig.get_paths()["purelib"]
    fallback_env = {**env, "PYTHONPATH": f"{project}:{site_packages}"}
    candidates = [c for c in (f"/usr/bin/python{version}", f"/usr/local/bin/python{version}")
                  if os.access(c, os.X_OK)]
    for candidate in candidates:
        if run_as_user_works([candidate, *probe], user, fallback_env):
            return PythonCommand((candidate,), fallback_env)
    if scratch is None or not candidates:
        return None
    shutil.copytree(Path(project) / "mailflow", scratch / "mailflow",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(site_packages, scratch / "site-packages", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "mailflow*"))
    for folder, _dirs, files in os.walk(scratch):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)
    copied_env = {**env, "PYTHONPATH": f"{scratch}:{scratch / 'site-packages'}"}
    for candidate in candidates:
        if run_as_user_works([candidate, *probe], user, copied_env):
            return PythonCommand((candidate,), copied_env)
    return None


class PostfixError(RuntimeError):
    pass


class PostfixInstance:
    """A private Postfix in a temporary folder; a context manager (start/stop)."""

    def __init__(self, *, base_dir: Path | None = None, smtp_port: int | None = None,
                 settings: Mapping[str, str] | None = None) -> None:
        problem = postfix_problem()
        if problem:
            raise PostfixError(problem)
        self.dir = Path(tempfile.mkdtemp(prefix="mailflow-postfix-", dir=base_dir))
        self.dir.chmod(0o755)  # postfix and the pipe user must reach what is inside
        self.config_dir = self.dir / "etc"
        self.queue_dir = self.dir / "spool"
        self.data_dir = self.dir / "lib"
        self.log_path = self.dir / "maillog"
        # Ours to move to another port if it was taken, as long as nobody read it.
        self._port_movable = smtp_port is None
        self._smtp_port = smtp_port or free_port()
        self._master_entries: list[str] = [self._smtpd_entry()]
        self._main: dict[str, str] = {
            "compatibility_level": "3.6",
            "config_directory": str(self.config_dir),
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "postfix.test",
            "mydomain": "postfix.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "relayhost": "",
            "relay_domains": "",
            "transport_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "biff": "no",
            # Only what a test routes in transport_maps leaves this instance: no DNS,
            # no MX, never a host other than the loopback nexthops a test names.
            "default_transport": "error:5.4.4 no route in this test instance",
            "relay_transport": "error:5.4.4 no route in this test instance",
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": str(self.dir),
            # No DNS at all: nexthops are [127.0.0.1]:port literals.
            "smtp_dns_support_level": "disabled",
            "lmtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            "lmtp_host_lookup": "native",
            # Fast queue for tests.
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "in_flow_delay": "0",
            "smtp_connect_timeout": "5s",
            "lmtp_connect_timeout": "5s",
            "command_time_limit": "60s",
            "delay_warning_time": "0",
            "smtputf8_enable": "yes",
        }
        self._main.update(settings or {})
        self._started = False
        self._master_pid: int | None = None
        for folder in (self.config_dir, self.queue_dir):
            folder.mkdir(mode=0o755)
        self.data_dir.mkdir(mode=0o700)
        postfix_user = pwd.getpwnam("postfix")
        os.chown(self.data_dir, postfix_user.pw_uid, postfix_user.pw_gid)

    # -- configuration, before start --------------------------------------------------

    def main_settings(self, values: Mapping[str, str]) -> None:
        """Set main.cf parameters (written at start; use :meth:`reload` afterwards)."""
        self._main.update(values)

    def add_master_entry(self, text: str) -> None:
        """Add a master.cf service: a line plus indented ``-o``/argument lines."""
        self._master_entries.append(text.rstrip("\n"))

    def write_file(self, name: str, content: str, mode: int = 0o644) -> Path:
        """Write a file (map, script, key) into the instance folder; returns its path."""
        path = self.dir / name
        path.write_text(content)
        path.chmod(mode)
        _cooled_down(path)
        return path

    def write_map(self, name: str, entries: Mapping[str, str]) -> str:
        """A ``texthash:`` lookup table (read at process start, no postmap needed)."""
        text = "".join(f"{key} {value}\n" for key, value in entries.items())
        return f"texthash:{self.write_file(name, text)}"

    def pipe_wrapper(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> Path:
        """A shell script that sets ``env`` and execs ``argv`` plus its own arguments.

        pipe(8) gives the command only ``export_environment``; baking the variables
        into the script is simpler and more robust than import/export_environment.
        """
        lines = ["#!/bin/sh", "# generated by mailflow.testing.postfix"]
        lines += [f"export {key}={shlex.quote(value)}" for key, value in sorted(env.items())]
        lines.append(f'exec {shlex.join(argv)} "$@"')
        return self.write_file(name, "\n".join(lines) + "\n", mode=0o755)

    def postconf(self, *args: str) -> str:
        return self._run([POSTCONF, "-c", str(self.config_dir), *args]).stdout

    @property
    def smtp_port(self) -> int:
        if not self._started:
            self._port_movable = False
        return self._smtp_port

    def _smtpd_entry(self) -> str:
        return f"127.0.0.1:{self._smtp_port} inet n - n - - smtpd"

    def _write_config(self) -> None:
        main = "".join(f"{key} = {value}\n" for key, value in self._main.items())
        (self.config_dir / "main.cf").write_text(
            "# generated by mailflow.testing.postfix\n" + main)
        (self.config_dir / "master.cf").write_text(
            BASE_MASTER_CF + "\n".join(self._master_entries) + "\n")
        for name in ("main.cf", "master.cf"):
            _cooled_down(self.config_dir / name)

    # -- running -----------------------------------------------------------------------

    @property
    def pid_file(self) -> Path:
        return self.queue_dir / "pid" / "master.pid"

    def start(self, timeout: float = 30.0) -> PostfixInstance:
        """``postfix start``; return once the master listens on :attr:`smtp_port`.

        A port someone else took since it was picked means another port and another
        start, unless :attr:`smtp_port` was read before (it may be wired in elsewhere).
        """
        for attempt in range(ATTEMPTS):
            logged = len(self.log())
            self._write_config()
            self._started = True  # from here on, stop() must run, even if start fails
            try:
                try:
                    self._start_master(timeout)
                    if self._wait_listening(timeout):
                        return self
                    failure = PostfixError(f"postfix smtpd did not listen on {self._smtp_port}"
                                           f":\n{self.log()[logged:]}")
                except PostfixError as exc:
                    failure = exc
                if not (self._port_movable and address_in_use(f"{failure}{self.log()[logged:]}")) \
                        or attempt == ATTEMPTS - 1:
                    raise failure
            except BaseException:
                self.stop()
                raise
            self.stop()
            self._smtp_port = free_port()
            self._master_entries[0] = self._smtpd_entry()
        raise AssertionError("unreachable")

    def _start_master(self, timeout: float) -> None:
        try:
            self._run([POSTFIX, "-c", str(self.config_dir), "start"], timeout=timeout)
        except PostfixError:
            # Seen once while another test run shared the machine ("mail system
            # startup failed", no reason logged): retried once, after a pause.
            self._run([POSTFIX, "-c", str(self.config_dir), "stop"], timeout=timeout,
                      check=False)
            time.sleep(1.0)
            self._run([POSTFIX, "-c", str(self.config_dir), "start"], timeout=timeout)
        self._master_pid = self._read_master_pid()

    def _wait_listening(self, timeout: float) -> bool:
        """Whether this instance's master (not a stranger) listens on the smtpd port."""
        pid = self._master_pid
        if pid is None or listening_ports(pid) is None:
            return wait_for_port("127.0.0.1", self._smtp_port, timeout)
        master = _process(pid)
        deadline = time.monotonic() + timeout
        while master is not None and not _wait_gone(master, 0):
            if self._smtp_port in (listening_ports(pid) or set()):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return False

    def stop(self, timeout: float = 15.0) -> None:
        """``postfix stop``; then kill whatever of this instance is left."""
        if not self._started:
            return
        self._started = False
        pid = self._master_pid or self._read_master_pid()
        master = _process(pid) if pid else None
        children = _children_of(pid) if pid else []
        with contextlib.suppress(PostfixError, subprocess.SubprocessError):
            self._run([POSTFIX, "-c", str(self.config_dir), "stop"], timeout=timeout)
        # Daemons (and pipe commands) notice a dead master on their own; make sure, but
        # never signal a process that merely reuses one of the recorded ids.
        for process in ([master] if master else []) + children:
            if not _wait_gone(process, 5 if process is master else 2):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process[0], signal.SIGKILL)
                _wait_gone(process, 5)
        self._master_pid = None

    def remove(self) -> None:
        """Delete the instance folder (queue, log, configuration)."""
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PostfixInstance:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _read_master_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _run(self, argv: Sequence[str], timeout: float = 30.0, check: bool = True
             ) -> subprocess.CompletedProcess[str]:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("MAIL_")},
               "MAIL_CONFIG": str(self.config_dir)}
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                                env=env, cwd=self.dir, check=False)
        if check and result.returncode != 0:
            raise PostfixError(f"{shlex.join(argv)} exited {result.returncode}:\n"
                               f"{result.stdout}{result.stderr}\n--- maillog ---\n{self.log()}")
        return result

    # -- observing ---------------------------------------------------------------------

    def queue(self) -> list[dict[str, Any]]:
        """``postqueue -j``: one dict per queued message.

        Keys: ``queue_name`` (incoming, active, deferred, hold, maildrop), ``queue_id``,
        ``sender``, ``arrival_time``, ``message_size``, ``recipients`` (each with
        ``address`` and, once a delivery was tried, ``delay_reason``).
        """
        out = self._run([POSTQUEUE, "-c", str(self.config_dir), "-j"]).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def flush(self) -> None:
        """``postqueue -f``: attempt every queued message now."""
        self._run([POSTQUEUE, "-c", str(self.config_dir), "-f"])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, pattern: str, timeout: float = 30.0, *,
                     after: int = 0) -> re.Match[str]:
        """Wait until the maillog (from character ``after`` on) matches ``pattern``."""
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            found = regex.search(self.log(), after)
            if found:
                return found
            if time.monotonic() >= deadline:
                raise AssertionError(f"maillog never matched {pattern!r} within {timeout}s:\n"
                                     f"{self.log()[after:][-6000:]}")
            time.sleep(0.1)

    def wait_for_queue(self, predicate: Callable[[list[dict[str, Any]]], object] | None = None,
                       timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait until ``predicate(queue)`` is true (default: the queue is empty)."""
        check = predicate or (lambda entries: not entries)
        deadline = time.monotonic() + timeout
        while True:
            entries = self.queue()
            if check(entries):
                return entries
            if time.monotonic() >= deadline:
                raise AssertionError(f"queue condition not met within {timeout}s: {entries}"
                                     f"\n--- maillog ---\n{self.log()[-6000:]}")
            time.sleep(0.2)


def _cooled_down(path: Path) -> None:
    """Date a file we just wrote a few seconds back.

    Postfix reads a configuration file or lookup table that changed in the last second
    or so again and again, 0.3 s apart, until it is older ("pausing to let it cool
    down", against files being edited): every command and daemon of a fresh instance
    waited ~1.8 s for main.cf.  These files are complete when written.
    """
    then = time.time() - 10
    os.utime(path, (then, then))


Process = tuple[int, str]  # pid and start time: a pid alone may be reused


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat fields after the command name (state is [0], ppid [1])."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _process(pid: int) -> Process | None:
    fields = _stat(pid)
    return (pid, fields[19]) if fields else None


def _children_of(pid: int) -> list[Process]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields and int(fields[1]) == pid:
                children.append((int(entry.name), fields[19]))
    return children


def _wait_gone(process: Process, timeout: float) -> bool:
    """True once the process has exited (or is a zombie), False on timeout."""
    pid, started = process
    deadline = time.monotonic() + timeout
    while True:
        fields = _stat(pid)
        if fields is None or fields[19] != started or fields[0] == "Z":
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)

