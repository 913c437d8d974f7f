"""The one settings object. Nothing else in Matchstream reads the environment."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "get_settings"]


class Settings(BaseSettings):
    """Runtime configuration, read from `MATCHSTREAM_*` environment variables.

    Example:
        >>> Settings(broker="kafka://127.0.0.1:19092").broker_port
        19092
    """

    model_config = SettingsConfigDict(env_prefix="MATCHSTREAM_", frozen=True, extra="ignore")

    broker: str = Field(
        "kafka://127.0.0.1:9092",
        description="MATCHSTREAM_BROKER: Kafka bootstrap URL(s), `kafka://host:port[;host:port]`.",
    )
    web_port: int = Field(6066, description="MATCHSTREAM_WEB_PORT: the worker's HTTP port.")
    web_bind: str = Field(
        "127.0.0.1",
        description="MATCHSTREAM_WEB_BIND: interface the HTTP server listens on (0.0.0.0 for all).",
    )
    web_host: str = Field(
        "127.0.0.1",
        description="MATCHSTREAM_WEB_HOST: host name other workers use to reach this one; "
        "requests for a pool are forwarded to the worker that owns it.",
    )
    data_dir: Path = Field(
        Path("var"),
        description="MATCHSTREAM_DATA_DIR: RocksDB tables and the local broker's files live here.",
    )
    topic_partitions: int = Field(
        8, ge=1, le=1024, description="MATCHSTREAM_TOPIC_PARTITIONS: partitions of every topic."
    )
    topic_prefix: str = Field(
        "", description="MATCHSTREAM_TOPIC_PREFIX: prepended to every topic name."
    )
    replication_factor: int | None = Field(
        None,
        ge=1,
        description="MATCHSTREAM_REPLICATION_FACTOR: copies of every topic, Faust changelogs "
        "included; `auto` or unset means one per broker, at most 3. min.insync.replicas "
        "follows: 2 from 3 copies on, else 1.",
    )
    standby_replicas: int = Field(
        1,
        ge=0,
        description="MATCHSTREAM_STANDBY_REPLICAS: other workers that keep each table partition "
        "current from its changelog, ready to take it over (Faust's default, 1); 0 disables "
        "standbys, so every move of a partition is a full recovery.",
    )
    database_url: str | None = Field(
        None, description="MATCHSTREAM_DATABASE_URL: PostgreSQL DSN; enables the Postgres sink."
    )
    jwt_secret: str | None = Field(
        None, description="MATCHSTREAM_JWT_SECRET: HS256 secret; unset means open dev mode."
    )
    app_id: str = Field(
        "matchstream",
        description="MATCHSTREAM_APP_ID: Faust app id (consumer group and changelog prefix).",
    )
    kafka_cache_dir: Path = Field(
        Path.home() / ".cache" / "matchstream" / "kafka",
        description="MATCHSTREAM_KAFKA_CACHE_DIR: where the broker's jars are downloaded once.",
    )
    tick_interval_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description="MATCHSTREAM_TICK_INTERVAL_S: how often expiry and relaxation are checked.",
    )
    stop_timeout_s: float = Field(
        45.0,
        gt=0,
        description="MATCHSTREAM_STOP_TIMEOUT_S: a worker told to stop (SIGTERM, SIGINT) that "
        "has not stopped after this long exits at once, as after a crash (the broker "
        "unreachable, say); under Kubernetes' default grace of 60 s.",
    )
    event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop",
        description="MATCHSTREAM_EVENT_LOOP: the worker's event loop; `uvloop` took about an "
        "eighth off its CPU per request in the stream bench (docs/performance.md), `asyncio` "
        "is the standard library's.",
    )

    @field_validator("replication_factor", mode="before")
    @classmethod
    def _auto_is_unset(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in {"", "auto"}:
            return None
        return value

    @field_validator("broker")
    @classmethod
    def _broker_has_scheme(cls, value: str) -> str:
        if "://" not in value:
            value = f"kafka://{value}"
        return value

    def as_environment(self) -> dict[str, str]:
        """These settings as `MATCHSTREAM_*` variables, for a child process."""
        return {
            f"MATCHSTREAM_{name.upper()}": str(value)
            for name, value in self.model_dump().items()
            if value is not None
        }

    @property
    def broker_hosts(self) -> list[str]:
        """`host:port` strings for clients that do not take Faust's URL form."""
        rest = self.broker.split("://", 1)[1]
        return [part.strip() for part in rest.replace(",", ";").split(";") if part.strip()]

    @property
    def broker_port(self) -> int:
        """Port of the first bootstrap server, used by the local broker."""
        return int(self.broker_hosts[0].rsplit(":", 1)[1])


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
