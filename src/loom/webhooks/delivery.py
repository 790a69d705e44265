"""The delivery worker: claims due deliveries and sends them, signed, at least once.

- Claim: due `pending` rows are taken with `FOR UPDATE SKIP LOCKED` (PostgreSQL: replicas never take
  the same row; SQLite: one writer, nothing to skip) and their `next_attempt_at` pushed past the
  attempt's longest time, a lease: a replica that dies mid-attempt leaves the row due again after it.
- Send: to the address the URL's check resolved (`addresses.resolve`, again at each attempt), with the
  Standard Webhooks headers; 2xx is delivered, anything else (status, timeout, refusal) is retried
  with exponential backoff and jitter until the retry window since the event ends, then `failed`.
- Bounded: at most `concurrency` attempts in flight per process, each cut at `timeout_s`; a slow or
  hanging receiver holds one slot for that long and nothing else (runs never wait on deliveries).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import sqlalchemy as sa
from standardwebhooks import Webhook

from loom import __version__
from loom.store.db import Database
from loom.webhooks import outbox
from loom.webhooks.addresses import AddressRefused, resolve
from loom.webhooks.tables import webhook_deliveries, webhook_endpoints

log = logging.getLogger("loom.webhooks")
_D = webhook_deliveries
_E = webhook_endpoints
# What an attempt's lease adds to its timeout (database round trips, a busy event loop).
_LEASE_MARGIN_S = 10.0


@dataclass(frozen=True)
class Policy:
    concurrency: int = 16
    timeout_s: float = 10.0
    retry_base_s: float = 5.0
    retry_max_s: float = 3600.0
    retry_window_s: float = 72 * 3600.0
    poll_s: float = 1.0
    allow_private: bool = False

    def backoff(self, attempts: int) -> float:
        """Seconds before the next attempt after `attempts` failed ones: doubling, capped, jittered
        (half to all of it) so that endpoints failing together do not retry together."""
        delay = min(self.retry_max_s, self.retry_base_s * 2.0 ** max(0, attempts - 1))
        return delay * random.uniform(0.5, 1.0)


@dataclass(frozen=True)
class Claimed:
    id: str
    payload: str
    attempts: int
    created_at: float
    url: str
    secrets: tuple[str, ...]


def signature(secrets: tuple[str, ...], msg_id: str, timestamp: int, body: str) -> str:
    """The `webhook-signature` header: one `v1,…` per valid secret, space-separated."""
    when = datetime.fromtimestamp(timestamp, UTC)
    return " ".join(Webhook(secret).sign(msg_id, when, body) for secret in secrets)


# How often (in polls) the worker marks failed what disabled endpoints kept pending past the window.
EXPIRY_POLLS = 10
EXPIRED = "not sent: the endpoint was disabled until the retry window had passed"


class DeliveryWorker:
    def __init__(self, db: Database, policy: Policy) -> None:
        self.db = db
        self.policy = policy
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None
        self._expired_at = 0.0

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """The loop (under the supervisor): claim what is due, as slots allow; sleep until woken or polled."""
        for engine in self.db.engines:
            outbox.add_waker(engine, self.wake)
        try:
            while True:
                self._wake.clear()
                if time.monotonic() >= self._expired_at + EXPIRY_POLLS * self.policy.poll_s:
                    await self.expire()
                free = self.policy.concurrency - len(self._inflight)
                claimed = await self.claim(free) if free > 0 else []
                for item in claimed:
                    task = asyncio.create_task(self._attempt(item), name=f"loom-webhook-{item.id}")
                    self._inflight.add(task)
                    task.add_done_callback(self._done)
                if claimed and len(claimed) == free:
                    continue  # more may be due
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.policy.poll_s)
        finally:
            for engine in self.db.engines:
                outbox.remove_waker(engine, self.wake)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._wake.set()

    async def expire(self) -> int:
        """Mark failed the pending deliveries of disabled endpoints that are older than the retry window
        (they are not sent while the endpoint is disabled, and would never be: re-enabled later, an
        endpoint gets only what is still within the window). Returns how many."""
        self._expired_at = time.monotonic()
        now = time.time()
        disabled = sa.select(_E.c.id).where(_E.c.enabled == sa.false())
        stale = _D.update().where(
            _D.c.status == "pending",
            _D.c.created_at < now - self.policy.retry_window_s,
            _D.c.endpoint_id.in_(disabled),
        )
        async with self.db.write() as conn:
            result = await conn.execute(stale.values(status="failed", last_error=EXPIRED))
        return int(result.rowcount or 0)

    async def claim(self, limit: int) -> list[Claimed]:
        now = time.time()
        due = (
            sa.select(_D.c.id, _D.c.payload, _D.c.attempts, _D.c.created_at, _E.c.data, _E.c.secret)
            .add_columns(_E.c.old_secret, _E.c.old_secret_until)
            .join(_E, _E.c.id == _D.c.endpoint_id)
            .where(_D.c.status == "pending", _D.c.next_attempt_at <= now, _E.c.enabled == sa.true())
            .order_by(_D.c.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True, of=_D)
        )
        async with self.db.write() as conn:
            rows = (await conn.execute(due)).all()
            if not rows:
                return []
            lease = now + self.policy.timeout_s + _LEASE_MARGIN_S
            await conn.execute(_D.update().where(_D.c.id.in_([r.id for r in rows])).values(next_attempt_at=lease))
        claimed = []
        for r in rows:
            keys = (r.secret,) if r.old_secret is None or (r.old_secret_until or 0) < now else (r.secret, r.old_secret)
            claimed.append(Claimed(r.id, r.payload, r.attempts, r.created_at, r.data["url"], keys))
        return claimed

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            # No redirects (a 3xx is a failed attempt: following it would skip the address check), no
            # proxies from the environment, and a small pool per receiver.
            self._http = httpx.AsyncClient(
                follow_redirects=False,
                trust_env=False,
                timeout=self.policy.timeout_s,
                limits=httpx.Limits(max_connections=self.policy.concurrency, max_keepalive_connections=8),
            )
        return self._http

    async def _attempt(self, item: Claimed) -> None:
        status_code: int | None = None
        error: str | None = None
        try:
            async with asyncio.timeout(self.policy.timeout_s):
                status_code = await self.send(item)
            if not 200 <= status_code < 300:
                error = f"the endpoint answered HTTP {status_code}"
        except AddressRefused as exc:
            error = f"refused: {exc}"
        except TimeoutError:
            error = f"no answer within {self.policy.timeout_s:g}s"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500] or type(exc).__name__
        except Exception as exc:
            log.exception("webhook delivery %s failed", item.id)
            error = f"server error: {type(exc).__name__}"
        await self._settle(item, status_code, error)

    async def send(self, item: Claimed) -> int:
        target = await resolve(item.url, allow_private=self.policy.allow_private)
        timestamp = int(time.time())
        headers = {
            "webhook-id": item.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(item.secrets, item.id, timestamp, item.payload),
            "content-type": "application/json",
            "user-agent": f"Loom-Webhooks/{__version__}",
            "host": target.host_header,
        }
        extensions: dict[str, Any] = {"sni_hostname": target.host} if target.scheme == "https" else {}
        request = self._client().build_request(
            "POST", target.pinned_url, content=item.payload.encode(), headers=headers, extensions=extensions
        )
        response = await self._client().send(request, stream=True)
        await response.aclose()  # the body is not read: a receiver cannot make Loom hold a large one
        return response.status_code

    async def _settle(self, item: Claimed, status_code: int | None, error: str | None) -> None:
        now = time.time()
        attempts = item.attempts + 1
        values: dict[str, Any] = {"attempts": attempts, "last_attempt_at": now, "last_status_code": status_code}
        if error is None:
            values.update(status="delivered", delivered_at=now, last_error=None)
        else:
            values["last_error"] = error[:500]
            retry_at = now + self.policy.backoff(attempts)
            if retry_at > item.created_at + self.policy.retry_window_s:
                values.update(status="failed")
            else:
                values.update(next_attempt_at=retry_at)
        async with self.db.write() as conn:
            await conn.execute(_D.update().where(_D.c.id == item.id, _D.c.status == "pending").values(**values))

    async def aclose(self) -> None:
        for task in list(self._inflight):
            task.cancel()
        for task in list(self._inflight):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._http is not None:
            await self._http.aclose()
            self._http = None
