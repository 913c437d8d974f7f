"""What the local broker runs on: Java 17+ and Apache Kafka's jars from Maven Central.

The jars are downloaded once by Maven (`streams/kafka-pom.xml`) into
`<cache_dir>/<KAFKA_VERSION>/lib/`; every node of every local cluster shares them.
`LocalKafkaError` lives here because the runtime is the first thing that can be
missing; the node and cluster modules raise it too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import subprocess
import tempfile
import time
from importlib import resources
from pathlib import Path

__all__ = ["KAFKA_VERSION", "LocalKafkaError", "ensure_jars", "find_java", "jar_dir", "tail"]

KAFKA_VERSION = "4.0.0"
"""Version of `org.apache.kafka:kafka_2.13` in `kafka-pom.xml`; names the jar cache."""

_MIN_JAVA = 17
_LOG_TAIL_LINES = 30
_DOWNLOAD_TIMEOUT_S = 900.0
_COMPLETE_MARKER = ".complete.json"
_JAVA_VERSION_RE = re.compile(r'version "(\d+)(?:\.(\d+))?')

log = logging.getLogger(__name__)


class LocalKafkaError(RuntimeError):
    """The local broker could not be prepared, started or stopped."""


def tail(lines: list[str], count: int = _LOG_TAIL_LINES) -> str:
    """The last `count` lines joined for an error message, or a note that there were none."""
    return "\n".join(lines[-count:]) if lines else "(no output)"


def jar_dir(cache_dir: Path) -> Path:
    """Where the jars of `KAFKA_VERSION` live once downloaded under `cache_dir`."""
    return Path(cache_dir).expanduser() / KAFKA_VERSION / "lib"


def find_java() -> str:
    """The `java` on PATH, checked to be recent enough for Kafka 4.

    Returns:
        Its path as `shutil.which` found it.

    Raises:
        LocalKafkaError: If there is no java, its version cannot be read, or it is too old.
    """
    java = shutil.which("java")
    if java is None:
        raise LocalKafkaError(
            f"java is not on PATH; Kafka {KAFKA_VERSION} needs Java {_MIN_JAVA} or newer "
            "(e.g. `apt-get install openjdk-17-jre-headless`)."
        )
    try:
        done = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LocalKafkaError(f"could not run `{java} -version`: {exc}") from exc
    match = _JAVA_VERSION_RE.search(done.stderr + done.stdout)
    if match is None:
        raise LocalKafkaError(f"could not read the Java version from `{java} -version`")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0_402" means Java 8
        major = int(match.group(2))
    if major < _MIN_JAVA:
        raise LocalKafkaError(
            f"{java} is Java {major}; Kafka {KAFKA_VERSION} needs Java {_MIN_JAVA} or newer."
        )
    return java


def ensure_jars(cache_dir: Path) -> Path:
    """Download the broker's jars with Maven unless a complete copy is cached.

    The download goes to a temporary directory next to the cache and is renamed
    into place only when complete, so an interrupted download is simply redone.

    Args:
        cache_dir: The cache root; the jars go to `jar_dir(cache_dir)`.

    Returns:
        The directory holding the jars (the classpath is `<dir>/*`).

    Raises:
        LocalKafkaError: If java (17+) or mvn is missing, or Maven fails.

    Example:
        >>> ensure_jars(Path("~/.cache/matchstream/kafka"))  # doctest: +SKIP
        PosixPath('/home/me/.cache/matchstream/kafka/4.0.0/lib')
    """
    find_java()
    lib_dir = jar_dir(cache_dir)
    pom = (resources.files("streams") / "kafka-pom.xml").read_bytes()
    digest = hashlib.sha256(pom).hexdigest()
    if _jars_complete(lib_dir, digest):
        return lib_dir
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LocalKafkaError(
            "mvn (Apache Maven) is not on PATH; it downloads the Kafka jars once "
            f"into {lib_dir}. Install it, e.g. `apt-get install maven`."
        )
    lib_dir.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    log.info("kafka.jars.download version=%s dest=%s", KAFKA_VERSION, lib_dir)
    with tempfile.TemporaryDirectory(dir=lib_dir.parent, prefix=".download-") as tmp:
        staging = Path(tmp) / "lib"
        # Maven runs on a copy so nothing (target/, a zipped package) depends on
        # where the package itself is installed.
        pom_copy = Path(tmp) / "pom.xml"
        pom_copy.write_bytes(pom)
        command = [mvn, "-q", "-B", "-f", str(pom_copy), "dependency:copy-dependencies"]
        command.append(f"-DoutputDirectory={staging}")
        try:
            done = subprocess.run(
                command,
                cwd=tmp,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=_DOWNLOAD_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise LocalKafkaError(
                f"mvn did not finish downloading the Kafka jars in {_DOWNLOAD_TIMEOUT_S:.0f}s"
            ) from exc
        jars = sorted(p.name for p in staging.glob("*.jar")) if staging.is_dir() else []
        if done.returncode != 0 or not jars:
            output = tail((done.stdout + done.stderr).splitlines())
            raise LocalKafkaError(
                f"mvn failed (exit {done.returncode}) downloading the Kafka jars:\n{output}"
            )
        marker = {"kafka": KAFKA_VERSION, "pom_sha256": digest, "jars": jars}
        (staging / _COMPLETE_MARKER).write_text(json.dumps(marker, indent=1))
        _replace_lib_dir(lib_dir, staging, digest)
    log.info(
        "kafka.jars.ready version=%s jars=%d elapsed_s=%.1f dest=%s",
        KAFKA_VERSION,
        len(jars),
        time.monotonic() - started,
        lib_dir,
    )
    return lib_dir


def _jars_complete(lib_dir: Path, digest: str) -> bool:
    try:
        marker = json.loads((lib_dir / _COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return False
    if marker.get("pom_sha256") != digest:
        return False
    return all((lib_dir / name).is_file() for name in marker.get("jars", []))


def _replace_lib_dir(lib_dir: Path, staging: Path, digest: str) -> None:
    if lib_dir.exists():
        # A stale or damaged copy: move it aside first, since rename() will not
        # replace a non-empty directory.
        lib_dir.rename(staging.parent / "old-lib")
    try:
        staging.rename(lib_dir)
    except OSError:
        # Another process finished the same download first; use its copy.
        if not _jars_complete(lib_dir, digest):
            raise
