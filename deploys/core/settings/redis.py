"""Redis section (``matrix_synapse_redis_*``): the replication bus every process subscribes to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from deploys.core.settings.reader import HIGHEST_PORT, Reader, is_abs_path

MAX_DBID: Final = 15  # Redis's default `databases 16`


@dataclass(frozen=True)
class RedisSettings:
    host: str
    port: int
    path: str | None  # a unix socket instead of host and port
    dbid: int


def read(r: Reader) -> RedisSettings:
    return RedisSettings(
        host=r.text("matrix_synapse_redis_host"),
        port=r.integer("matrix_synapse_redis_port", 1, HIGHEST_PORT),
        path=r.check(
            "matrix_synapse_redis_path",
            lambda v: v is None or is_abs_path(v),
            "allowed: None or an absolute unix socket path",
        ),
        dbid=r.integer("matrix_synapse_redis_dbid", 0, MAX_DBID),
    )
