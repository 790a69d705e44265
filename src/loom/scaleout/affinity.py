"""Any replica runs any thread's code: each thread's code-interpreter session has one owner replica.

The owner is recorded in the database (`sandbox_owners`: thread → replica, its internal address, a lease
the owner renews while it lives). A run executing on another replica sends its code to the owner over
the internal channel (`POST /internal/sandbox/execute`, `loom.api.routes.internal`), authenticated by a
secret the replicas share through the database (`internal_secrets`, made once; `LOOM_INTERNAL_SECRET`
overrides it). The owner reads the input Files and makes the output Files itself; ids come back.

When the owner is gone (its lease lapsed, it cannot be reached, it is draining, or it no longer holds
the thread), the executing replica takes the ownership over, starts a new session and tells the model
that the earlier state is lost. On SQLite one process serves everything: every session is local.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import secrets
import socket
import time
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from loom.config import Settings
from loom.runs.code_sessions import Execution, LocalCodeSessions, TextSink
from loom.sandbox.types import SandboxUnavailable
from loom.store import tables
from loom.store.db import Database

log = logging.getLogger("loom.scaleout")

SECRET_HEADER = "x-loom-internal-secret"
#: The error code a draining replica answers internal calls with (the caller takes the session over).
DRAINING = "replica_draining"
#: Told to the model (in the execution's logs) when the thread's session was lost with its replica; worded
#: as the session tells a kernel restart (`loom.sandbox.session`).
LOST_NOTE = (
    "[The sandbox session of this thread was lost with the server that held it; it was restarted and "
    "earlier variables and files are gone.]"
)


# How long deleting a thread waits for the owner of its session to close it.
_CLOSE_WAIT_S = 10.0


class OwnerGone(Exception):
    """The owner could not run the call (unreachable, draining, no longer the owner)."""


def advertised_address(host: str, port: int, override: str = "") -> str:
    """The base URL other replicas reach this one at: the override when set, else `host:port` as `loom
    serve` listens, a wildcard address becoming this machine's routable address (or loopback)."""
    if override:
        return override.rstrip("/")
    try:
        wildcard = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        wildcard = False  # a host name: used as it is
    if wildcard:
        host = _routable_address()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _routable_address() -> str:
    """This machine's address as others would see it (the source address of a route; no packet is sent)."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # TEST-NET-1: only the routing table is consulted
        address: str = s.getsockname()[0]
        if not ipaddress.ip_address(address).is_unspecified:
            return address
    return "127.0.0.1"


class SessionAffinity:
    """Routes each thread's code to the replica owning its session. Implements `CodeSessions`."""

    def __init__(
        self, local: LocalCodeSessions, db: Database, settings: Settings, replica: str, *, single_process: bool
    ) -> None:
        self.local = local
        self.db = db
        self.replica = replica
        self.single_process = single_process
        self.lease_s = settings.lease_s
        self.default_timeout_s = settings.sandbox_timeout_s
        # Set by `loom serve` (`advertised_address`); empty: other replicas cannot reach this one.
        self.address = settings.internal_address.rstrip("/")
        self._secret_override = settings.internal_secret
        self._secret: str | None = None
        self.draining = False
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(settings.sandbox_timeout_s + 120.0, connect=5.0))

    # ------------------------------------------------------------------------------------------ secret

    async def secret(self) -> str:
        """The replicas' shared secret: the setting, else the one in the database (made by the first)."""
        if self._secret_override:
            return self._secret_override
        if self._secret is None:
            t = tables.internal_secrets
            with contextlib.suppress(IntegrityError):
                async with self.db.write() as conn:
                    found = (await conn.execute(sa.select(t.c.value).where(t.c.name == "internal"))).scalar()
                    if found is None:
                        await conn.execute(t.insert().values(name="internal", value=secrets.token_urlsafe(32)))
            async with self.db.read() as conn:
                self._secret = (await conn.execute(sa.select(t.c.value).where(t.c.name == "internal"))).scalar_one()
        return self._secret

    async def check_secret(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), (await self.secret()).encode())

    # --------------------------------------------------------------------------------------- ownership

    async def _owner(self, thread_id: str) -> tuple[str, str, float] | None:
        t = tables.sandbox_owners
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    sa.select(t.c.replica, t.c.address, t.c.lease_expires_at).where(t.c.thread_id == thread_id)
                )
            ).first()
        return (str(row[0]), str(row[1]), float(row[2])) if row is not None else None

    async def owned_here(self, thread_id: str) -> bool:
        owner = await self._owner(thread_id)
        return owner is not None and owner[0] == self.replica

    async def _claim(self, thread_id: str) -> tuple[str | None, bool]:
        """(the owner's address when another replica owns the session, else None; whether a lapsed owner's
        session was taken over). Takes the ownership when there is none or it lapsed."""
        t = tables.sandbox_owners
        for _ in range(5):
            now = time.time()
            owner = await self._owner(thread_id)
            if owner is not None and owner[0] != self.replica and owner[2] > now and owner[1]:
                return owner[1], False
            mine = {"replica": self.replica, "address": self.address, "lease_expires_at": now + self.lease_s}
            try:
                async with self.db.write() as conn:
                    if owner is None:
                        await conn.execute(t.insert().values(thread_id=thread_id, **mine))
                        return None, False
                    taken = await conn.execute(
                        t.update().where(t.c.thread_id == thread_id, t.c.replica == owner[0]).values(**mine)
                    )
                    if taken.rowcount == 1:
                        return None, owner[0] != self.replica
            except IntegrityError:
                pass  # another replica claimed it at the same moment: read again
        raise SandboxUnavailable("The thread's sandbox session is changing hands; try again.", code="sandbox_busy")

    async def _take_over(self, thread_id: str, gone: str) -> bool:
        """Take the session over from the owner at address `gone`; False when another replica did first."""
        t = tables.sandbox_owners
        async with self.db.write() as conn:
            taken = await conn.execute(
                t.update()
                .where(t.c.thread_id == thread_id, t.c.address == gone, t.c.replica != self.replica)
                .values(replica=self.replica, address=self.address, lease_expires_at=time.time() + self.lease_s)
            )
        return taken.rowcount == 1

    async def renew(self) -> None:
        t = tables.sandbox_owners
        async with self.db.write() as conn:
            await conn.execute(
                t.update().where(t.c.replica == self.replica).values(lease_expires_at=time.time() + self.lease_s)
            )

    async def renew_loop(self) -> None:
        while True:
            await self.renew()
            await asyncio.sleep(max(0.2, self.lease_s / 3))

    async def release(self) -> None:
        """Give up every session this replica owns (a drain, a stop): their leases lapse now, so the next
        run of each thread starts afresh on whichever replica gets it, and is told the state was lost."""
        if self.single_process:
            return
        t = tables.sandbox_owners
        async with self.db.write() as conn:
            await conn.execute(t.update().where(t.c.replica == self.replica).values(lease_expires_at=0.0))

    async def forget(self, thread_id: str) -> None:
        """The thread was deleted: its ownership goes. A session here is closed by the sandbox's own hook;
        one another replica owns is closed there, told over the internal channel (`close`), at once
        rather than at its idle timeout (an owner that cannot be told lets it expire there)."""
        if self.single_process:
            return
        owner = await self._owner(thread_id)
        if owner is not None and owner[0] != self.replica and owner[1] and owner[2] > time.time():
            try:
                await self._call(owner[1], "close", {"thread_id": thread_id}, wait_s=_CLOSE_WAIT_S)
            except (OwnerGone, SandboxUnavailable) as exc:
                log.warning(
                    "could not close the sandbox session of deleted thread %s at %s: %s", thread_id, owner[1], exc
                )
        t = tables.sandbox_owners
        async with self.db.write() as conn:
            await conn.execute(t.delete().where(t.c.thread_id == thread_id))

    async def aclose(self) -> None:
        await self._client.aclose()

    # ------------------------------------------------------------------------------------ CodeSessions

    async def execute(
        self,
        project: str,
        thread_id: str,
        code: str,
        file_ids: list[str],
        call_id: str,
        *,
        timeout_s: float | None = None,
        on_text: TextSink | None = None,
    ) -> Execution:
        if self.single_process:
            return await self.local.execute(
                project, thread_id, code, file_ids, call_id, timeout_s=timeout_s, on_text=on_text
            )
        lost = False
        for _ in range(3):
            address, lost_now = await self._claim(thread_id)
            lost = lost or lost_now
            if address is None:
                break
            body = {
                "project": project,
                "thread_id": thread_id,
                "code": code,
                "file_ids": file_ids,
                "call_id": call_id,
                "timeout_s": timeout_s,
            }
            try:
                wait = (timeout_s or self.default_timeout_s) + 120.0
                return Execution.from_json(await self._call(address, "execute", body, wait_s=wait))
            except OwnerGone as exc:
                log.warning("sandbox owner of %s at %s is gone (%s): taking the session over", thread_id, address, exc)
                if await self._take_over(thread_id, address):
                    lost = True
                    break
        result = await self.local.execute(
            project, thread_id, code, file_ids, call_id, timeout_s=timeout_s, on_text=on_text
        )
        if lost:
            result.logs = LOST_NOTE + "\n" + result.logs
        return result

    async def export(self, project: str, thread_id: str, links: list[str], max_bytes: int) -> list[tuple[str, str]]:
        if not self.single_process:
            owner = await self._owner(thread_id)
            if owner is not None and owner[0] != self.replica and owner[1]:
                body = {"project": project, "thread_id": thread_id, "links": links, "max_bytes": max_bytes}
                try:
                    made = (await self._call(owner[1], "export", body))["files"]
                except OwnerGone:
                    return []  # the session, and its files, went with the owner
                return [(str(link), str(file_id)) for link, file_id in made]
        return await self.local.export(project, thread_id, links, max_bytes)

    async def _call(self, address: str, what: str, body: dict[str, Any], wait_s: float | None = None) -> dict[str, Any]:
        timeout = httpx.Timeout(wait_s, connect=5.0) if wait_s is not None else httpx.USE_CLIENT_DEFAULT
        try:
            response = await self._client.post(
                f"{address}/internal/sandbox/{what}",
                json=body,
                headers={SECRET_HEADER: await self.secret()},
                timeout=timeout,
            )
        except httpx.TransportError as exc:
            raise OwnerGone(type(exc).__name__) from exc
        if response.status_code == 200:
            answer: dict[str, Any] = response.json()
            return answer
        try:
            error = response.json()["error"]
            message, code = str(error["message"]), error.get("code")
        except (ValueError, KeyError, TypeError):
            raise OwnerGone(f"HTTP {response.status_code}") from None
        if response.status_code == 503 and code != DRAINING:
            raise SandboxUnavailable(message, code=code)  # the owner's sandbox cannot run it: as a local one
        raise OwnerGone(f"HTTP {response.status_code}: {message}")
