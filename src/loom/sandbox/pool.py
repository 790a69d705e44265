"""Kernels started in advance, each with an empty volume and a sandbox uid of its own.

A slot is a started kernel and its /mnt/data volume. The pool keeps `size` of them ready (more while
someone waits for one), never more than the room the manager gives it, and starts them in the
background; a taken slot becomes a session's, and goes back through `discard` (kernel killed, volume
destroyed, uid freed). The uid of a slot comes from this instance's block (`SandboxHost.uid`), so no
two live sandboxes on the host share one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import Callable

import zmq.asyncio

from loom.sandbox.host import SandboxHost
from loom.sandbox.kernel import KernelProcess
from loom.sandbox.launcher import Launcher
from loom.sandbox.types import SandboxLimits, SandboxUnavailable
from loom.sandbox.volumes import DataVolume

log = logging.getLogger("loom.sandbox")


class Slot:
    """A started kernel and its volume, not yet given to a key (the pool), or a session's."""

    def __init__(self, kernel: KernelProcess, volume: DataVolume, uid_slot: int) -> None:
        self.kernel = kernel
        self.volume = volume
        self.uid_slot = uid_slot


class KernelPool:
    """Makes and unmakes slots for one manager, and keeps some started ahead of need.

    `room()` says how many slots may exist besides the sessions' (the manager's session limit); the
    pool stops filling once `close` is called."""

    def __init__(
        self,
        *,
        host: SandboxHost,
        launcher: Launcher,
        context: zmq.asyncio.Context,
        limits: SandboxLimits,
        size: int,
        uid_slots: int,
        room: Callable[[], int],
    ) -> None:
        self.host = host
        self.launcher = launcher
        self.limits = limits
        self.size = size
        self._ctx = context
        self._room = room
        self._ready: list[Slot] = []
        self._waiters = 0
        self._filling: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._free_uid_slots = list(range(uid_slots))
        self._volume_counter = 0
        self._closing = False

    @property
    def pooled(self) -> int:
        """Slots started and waiting."""
        return len(self._ready)

    @property
    def filling(self) -> int:
        """Slots being started in the background."""
        return len(self._filling)

    # ----------------------------------------------------------------------------------- making slots

    async def new_volume(self) -> DataVolume:
        if not self._free_uid_slots:
            raise SandboxUnavailable("No sandbox uid is free (too many sessions).")
        uid_slot = self._free_uid_slots.pop(0)
        self._volume_counter += 1
        vid = f"v-{self.host.instance}-{self._volume_counter}-{secrets.token_hex(3)}"
        switch = self.launcher.switches_uid
        uid = self.host.uid(uid_slot) if switch else os.getuid()
        gid = uid if switch else os.getgid()
        try:
            vol = await asyncio.to_thread(
                DataVolume.create,
                self.host.volumes_dir / vid,
                self.host.mounts_dir / vid,
                uid=uid,
                gid=gid,
                disk_bytes=self.limits.disk_bytes,
                loop=self.host.loop_volumes,
                uid_slot=uid_slot,
            )
        except BaseException:
            self._free_uid_slots.append(uid_slot)
            raise
        return vol

    async def start_kernel(self, volume: DataVolume) -> KernelProcess:
        spec = await asyncio.to_thread(self.launcher.prepare, volume)
        kernel = KernelProcess(spec, self._ctx, self.limits)
        await kernel.start()
        return kernel

    async def new_slot(self) -> Slot:
        volume = await self.new_volume()
        try:
            kernel = await self.start_kernel(volume)
        except BaseException:
            await self.destroy_volume(volume)
            raise
        return Slot(kernel, volume, volume.uid_slot)

    async def destroy_volume(self, volume: DataVolume) -> None:
        await asyncio.to_thread(volume.destroy)
        if volume.uid_slot >= 0:
            self._free_uid_slots.append(volume.uid_slot)

    async def discard(self, slot: Slot) -> None:
        """End a slot: its kernel killed (and its processes with it), its volume destroyed, its uid freed."""
        await slot.kernel.kill()
        await self.destroy_volume(slot.volume)

    async def restart_kernel(self, old: KernelProcess, volume: DataVolume) -> KernelProcess:
        """A fresh kernel on the same volume (and so the same uid), the old one killed first."""
        await old.kill()
        return await self.start_kernel(volume)

    # ---------------------------------------------------------------------------------------- the pool

    async def prime(self) -> None:
        """Start the first slot here (errors show), then fill the rest in the background."""
        self._ready.append(await self.new_slot())
        self.refill()

    def refill(self) -> None:
        if self._closing:
            return
        want = self.size + self._waiters
        room = self._room()
        while len(self._ready) + len(self._filling) < min(want, room):
            task = asyncio.create_task(self._fill_one())
            self._filling.add(task)
            task.add_done_callback(self._filling.discard)

    async def _fill_one(self) -> None:
        try:
            slot = await self.new_slot()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("could not start a sandbox kernel for the pool")
            await asyncio.sleep(1.0)
            return
        finally:
            self._changed.set()
        if self._closing:
            await self.discard(slot)
            return
        self._ready.append(slot)
        self._changed.set()

    async def take(self) -> Slot:
        """A started kernel from the pool (waiting for one to start if it is empty)."""
        self._waiters += 1
        try:
            while True:
                while self._ready:
                    slot = self._ready.pop(0)
                    if slot.kernel.alive:
                        return slot
                    await self.discard(slot)
                self.refill()
                self._changed.clear()
                if not self._filling:
                    # Nothing is starting (the last try failed): start one here, and let errors show.
                    return await self.new_slot()
                await self._changed.wait()
        finally:
            self._waiters -= 1
            self.refill()

    # ---------------------------------------------------------------------------------------- closing

    def close(self) -> None:
        """Start nothing more (what is starting is discarded once started)."""
        self._closing = True

    async def cancel_fills(self) -> None:
        for task in list(self._filling):
            task.cancel()
        for task in list(self._filling):
            with contextlib.suppress(BaseException):
                await task

    async def discard_ready(self) -> None:
        """Discard the slots waiting in the pool."""
        ready, self._ready = self._ready, []
        for slot in ready:
            await self.discard(slot)
