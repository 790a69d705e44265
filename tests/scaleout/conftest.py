"""Two replicas of Loom on one PostgreSQL and one object store (a real SeaweedFS), each with a data
directory of its own (as on two machines), the real sandbox, one scripted model. Needs bubblewrap and the
sandbox environment (`make test`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.code_interpreter.conftest import CI_ENV, require_sandbox
from tests.conftest import s3_blob_env
from tests.fakes.upstream import FakeUpstream
from tests.support.postgres import new_database
from tests.support.seaweed import SeaweedS3
from tests.support.server import LoomServer

# Leases short enough that a killed replica's runs and sessions are taken over within seconds.
LEASE_S = 3.0


@dataclass
class Cluster:
    database_url: str
    replicas: list[LoomServer]
    blob_env: dict[str, str]  # the one object store all replicas keep file bytes in

    def add(self, upstream: FakeUpstream, extra_env: dict[str, str] | None = None) -> LoomServer:
        server = LoomServer(
            database_url=self.database_url,
            upstream_base_url=upstream.base_url,
            extra_env={**CI_ENV, **self.blob_env, "LOOM_LEASE_S": str(LEASE_S), **(extra_env or {})},
        )
        self.replicas.append(server)
        return server.start()

    def stop(self) -> None:
        for server in self.replicas:
            server.stop()


@pytest.fixture()
def cluster(upstream: FakeUpstream, seaweed: SeaweedS3) -> Iterator[Cluster]:
    require_sandbox()
    made = Cluster(new_database(), [], s3_blob_env(seaweed))
    try:
        made.add(upstream)
        made.add(upstream)
        yield made
    finally:
        made.stop()
