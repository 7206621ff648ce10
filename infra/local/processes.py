"""The local stack's processes: free ports, starting a service in a process group of its own (as another user
when asked), stopping exactly what was started (by pid, checked against its command line), waiting for a service
to be ready, and the state folder that records it all (``state.json``).

The services themselves are in ``seaweedfs.py``, ``postgres.py`` and ``prefect_server.py``; ``localstack.py`` is
the CLI (``up``/``down``) that starts them in order.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from kinship.server_retries import wait_for

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Whether nothing listens on ``port`` (connections lingering in TIME_WAIT do not count: servers reuse it)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_process(argv: list[str], log_path: Path, env: dict[str, str], cwd: Path,
                  account: Account | None = None) -> subprocess.Popen:
    """Start ``argv`` in its own session (so its whole process group can be stopped), output to ``log_path``;
    as ``account``'s user and group (no supplementary groups) when given."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    identity = account.popen_args() if account else {}
    with open(log_path, "ab") as log:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=env, cwd=cwd, start_new_session=True, **identity)


def command_line(pid: int) -> list[str] | None:
    """The argv of a running process, or None if there is none (zombies count as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as status_file:
            if status_file.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                return None
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return [part.decode(errors="replace") for part in cmdline.read().split(b"\0") if part]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    except PermissionError:
        return None  # not ours


def owns(pid: int, argv: list[str]) -> bool:
    """Whether ``pid`` still runs the command we started (a recycled pid runs something else)."""
    actual = command_line(pid)
    tail = argv[1:]  # argv[0] may be rewritten by a shebang (python /path/prefect ...)
    return actual is not None and actual[-len(tail):] == tail if tail else actual is not None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)  # only succeeds for our own children; keeps them from lingering as zombies
    except ChildProcessError:
        pass


def descendants(pid: int) -> dict[int, list[str]]:
    """Every live descendant of ``pid`` with its argv (Prefect starts flow runs in process groups of their own)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                argv = command_line(child)
                if argv:
                    found[child] = argv
                    frontier.append(child)
    return found


def _signal(pid: int, signum: int) -> None:
    """Signal ``pid``'s whole group when it leads one, else just ``pid``."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _gone(pid: int) -> bool:
    _reap(pid)
    return command_line(pid) is None and not _group_alive(pid)


def stop_many(targets: list[tuple[int, list[str]]], timeout: float = 20.0) -> dict[int, str]:
    """Stop several processes and their groups at once (TERM, wait, then KILL), only if still running their argv.

    Descendants outside the groups (flow runs) are noted first and stopped too if they outlive their parent.
    """
    outcome = {pid: "not running" for pid, _ in targets}
    pending = [pid for pid, argv in targets if owns(pid, argv)]
    family = {child: argv for pid in pending for child, argv in descendants(pid).items()}
    for pid in pending:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        time.sleep(0.1)
        for pid in [pid for pid in pending if _gone(pid)]:
            outcome[pid] = "stopped"
            pending.remove(pid)
    for pid in pending:
        _signal(pid, signal.SIGKILL)
        _reap(pid)
        outcome[pid] = "killed"
    orphans = [(child, argv) for child, argv in family.items() if owns(child, argv)]
    if orphans:
        stop_many(orphans, timeout)
    for pid, _ in targets:
        _reap(pid)
    return outcome


def wait_until(check: Callable[[], object], what: str, timeout: float, alive: Callable[[], bool] | None = None,
               log: Path | None = None) -> float:
    """Poll ``check`` until it holds (``wait_for``, every 0.25 s); fail fast if ``alive`` says the process died,
    with the last lines of its ``log``. Returns seconds waited."""
    start = time.monotonic()
    wait_for(check, what, timeout, interval=0.25, alive=alive, detail=lambda: _log_tail(log))
    return time.monotonic() - start


def _log_tail(log: Path | None, lines: int = 15) -> str:
    if log is None or not log.exists():
        return ""
    return f"\n--- last lines of {log} ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 2.0) -> tuple[int, bytes] | None:
    """(status, body) of a GET, or None when nothing answers."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (urllib.error.URLError, OSError):
        return None


def write_private(path: Path, text: str) -> None:
    """Write a secret-bearing file that only its owner can read (created 0600, never world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(temp, 0o600)
    os.replace(temp, path)


# ---------------------------------------------------------------- the state folder


class BadSetting(ValueError):
    """A setting whose value the stack does not know: one line on stderr, exit status 2, nothing started."""


@dataclass(frozen=True)
class Account:
    """An unprivileged user a process is started as (PostgreSQL, when root starts the stack)."""

    name: str
    uid: int
    gid: int

    def popen_args(self) -> dict:
        """``subprocess`` arguments that start a command as this user, with no supplementary groups."""
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


@dataclass
class Stack:
    """Paths and settings of one local stack; ``state.json`` keeps ports and pids between runs."""

    state_dir: Path
    venv: Path

    @classmethod
    def default(cls) -> Stack:
        state = Path(os.environ.get("KINSHIP_STACK_DIR") or REPO / ".stack").resolve()
        venv = Path(os.environ.get("KINSHIP_VENV") or REPO / ".venv").resolve()
        return cls(state, venv)

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    def load(self) -> dict:
        return json.loads(self.state_file.read_text()) if self.state_file.exists() else {}

    def save(self, state: dict) -> None:
        write_private(self.state_file, json.dumps(state, indent=2))

    def clean_env(self) -> dict[str, str]:
        """Our environment minus any PREFECT_/AWS_/KINSHIP_ settings, so a user's profile cannot leak in."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_", "KINSHIP_"))}
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        return env


def is_running(state: dict, name: str) -> bool:
    """Whether the process recorded as ``name`` in ``state`` still runs what it was started with."""
    entry = state.get("pids", {}).get(name)
    return bool(entry) and owns(entry["pid"], entry["argv"])


def record(state: dict, name: str, process: subprocess.Popen, argv: list[str], log: Path) -> None:
    """Note ``process`` in ``state`` as ``name``, so ``down`` can stop exactly it (by pid and argv)."""
    state.setdefault("pids", {})[name] = {"pid": process.pid, "argv": argv, "log": str(log), "started": time.time()}
