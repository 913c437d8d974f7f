"""A throwaway PostgreSQL server for the integration tier.

`initdb` creates a cluster in a fresh temporary directory; the server listens
on 127.0.0.1 only (its unix socket stays inside that directory) and is stopped
and deleted by `close()`. initdb refuses to run as root, so under root (CI)
every server command runs as the `postgres` user of the Debian package.
A missing binary or user is an error, never a skip.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from types import TracebackType
from typing import Self

from streams.kafka_local import free_port

__all__ = ["LocalPostgres", "LocalPostgresError", "find_bin_dir"]

_HOST = "127.0.0.1"
_USER = "matchstream"
_RUN_AS = "postgres"
_DEBIAN_ROOT = Path("/usr/lib/postgresql")


class LocalPostgresError(RuntimeError):
    """The server could not be created, started or stopped; the message says why."""


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))


def find_bin_dir() -> Path:
    """The directory holding initdb and pg_ctl: PATH first, then Debian's newest version.

    Raises:
        LocalPostgresError: Neither place has both programs.
    """
    on_path = shutil.which("pg_ctl")
    if on_path is not None and shutil.which("initdb") is not None:
        return Path(on_path).parent
    candidates = sorted(
        (path for path in _DEBIAN_ROOT.glob("*/bin") if (path / "initdb").is_file()),
        key=_version_key,
        reverse=True,
    )
    if not candidates:
        raise LocalPostgresError(
            f"initdb/pg_ctl are neither on PATH nor under {_DEBIAN_ROOT}/<version>/bin; "
            "install PostgreSQL (e.g. `apt-get install postgresql`)"
        )
    return candidates[0]


class LocalPostgres:
    """One cluster in a temporary directory, reachable with a password over TCP.

    Example:
        >>> with LocalPostgres() as server:  # doctest: +SKIP
        ...     server.url("postgres")
        'postgresql://matchstream:...@127.0.0.1:54321/postgres'
    """

    def __init__(self, *, port: int | None = None) -> None:
        self.bin_dir = find_bin_dir()
        self.port = port or free_port()
        self.password = f"pw-{uuid.uuid4().hex}"
        self.home = Path(tempfile.mkdtemp(prefix="matchstream-pg-"))
        self.data_dir = self.home / "data"
        self.log_path = self.home / "server.log"
        self._run_as = self._service_user() if os.geteuid() == 0 else None
        self._initdb()

    def url(self, database: str = "postgres") -> str:
        """A DSN for `database` with the superuser's password."""
        return f"postgresql://{_USER}:{self.password}@{_HOST}:{self.port}/{database}"

    def start(self, timeout_s: float = 60.0) -> None:
        """Start the server and wait until it accepts connections."""
        options = (
            f"-c listen_addresses={_HOST} -p {self.port} -k {self.home} "
            # Test data need not survive a power cut; a clean stop still writes it all.
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._pg_ctl(
            ["start", "-w", "-t", str(int(timeout_s)), "-l", str(self.log_path), "-o", options],
            timeout_s=timeout_s + 10,
        )

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop the server (fast shutdown: sessions are cut); data stays for a restart."""
        if self.running:
            self._pg_ctl(["stop", "-w", "-m", "fast", "-t", str(int(timeout_s))], timeout_s + 10)

    @property
    def running(self) -> bool:
        done = self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "status"], 30)
        return done.returncode == 0

    def close(self) -> None:
        """Stop the server and delete its directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def log_tail(self, lines: int = 30) -> str:
        """The server log's last lines, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def _service_user(self) -> pwd.struct_passwd:
        try:
            user = pwd.getpwnam(_RUN_AS)
        except KeyError:
            raise LocalPostgresError(
                f"running as root, but there is no `{_RUN_AS}` user to run PostgreSQL as "
                "(the Debian `postgresql` package creates it)"
            ) from None
        if shutil.which("runuser") is None:
            raise LocalPostgresError("running as root, but `runuser` is not on PATH")
        # The server must own its directories; /tmp itself is open to everyone.
        os.chown(self.home, user.pw_uid, user.pw_gid)
        return user

    def _initdb(self) -> None:
        password_file = self.home / "password"
        password_file.write_text(self.password + "\n")
        if self._run_as is not None:
            os.chown(password_file, self._run_as.pw_uid, self._run_as.pw_gid)
        command = [
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            _USER,
            f"--pwfile={password_file}",
            # TCP needs the password, so a test that leaks it into a log would notice.
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        ]
        try:
            done = self._run(command, timeout_s=120)
        finally:
            password_file.unlink(missing_ok=True)
        if done.returncode != 0:
            shutil.rmtree(self.home, ignore_errors=True)
            raise LocalPostgresError(f"initdb failed (exit {done.returncode}):\n{done.stdout}")

    def _pg_ctl(self, args: list[str], timeout_s: float) -> None:
        command = [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args]
        done = self._run(command, timeout_s)
        if done.returncode != 0:
            raise LocalPostgresError(
                f"pg_ctl {args[0]} failed (exit {done.returncode}):\n{done.stdout}\n"
                f"server log:\n{self.log_tail()}"
            )

    def _run(self, command: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
        if self._run_as is not None:
            command = ["runuser", "-u", self._run_as.pw_name, "--", *command]
        try:
            return subprocess.run(
                command,
                # A directory the service user can enter, whatever ours is.
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LocalPostgresError(f"could not run {command[0]}: {exc}") from exc
