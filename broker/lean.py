"""Lean per-connection queues: what a connection keeps while idle is the broker's per-client
memory (issue 16, docs/benchmarks.md). No amqtt import: broker/hardening.py (the amqtt seam)
installs these where amqtt expects its ``asyncio.Queue`` objects."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

__all__ = ["LeanQueue", "TaggedQueue"]


class LeanQueue:
    """The part of ``asyncio.Queue`` amqtt uses, without its four preallocated deques and
    Event (~2.5 KB each, four queues per connection): storage is created on first put."""

    __slots__ = ("_items", "_getters", "_waiter")

    def __init__(self) -> None:
        self._items: deque[Any] | None = None
        self._getters: list[asyncio.Future[None]] | None = None
        self._waiter: asyncio.Future[None] | None = None  # see waiter()

    def qsize(self) -> int:
        return len(self._items) if self._items else 0

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: Any) -> None:
        if self._items is None:
            self._items = deque()
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
                return
        getters = self._getters
        while getters:
            getter = getters.pop(0)
            if not getter.done():
                getter.set_result(None)
                break

    async def put(self, item: Any) -> None:
        self.put_nowait(item)

    def get_nowait(self) -> Any:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._take()

    def _take(self) -> Any:
        items = self._items
        item = items.popleft()  # type: ignore[union-attr]
        if not items:
            self._items = None  # an empty deque keeps a 64-slot block (~0.7 KB): let it go
        return item

    def post_disconnect(self, waiter: asyncio.Future[Any]) -> None:
        """Done-callback of a connection's disconnect waiter: the loop's last item."""
        self.put_nowait(("disconnect", waiter))

    def waiter(self) -> asyncio.Future[None]:
        """A future resolved when an item is there (at once if one is): the queue's single
        consumer awaits it directly, so an idle connection keeps no coroutine frame for its
        wait (``get`` keeps one). Cancelling the await is safe: the item stays queued."""
        future = asyncio.get_running_loop().create_future()
        if self._items:
            future.set_result(None)
        else:
            self._waiter = future
        return future

    async def get(self) -> Any:
        while not self._items:
            getter = asyncio.get_running_loop().create_future()
            if self._getters is None:
                self._getters = []
            self._getters.append(getter)
            try:
                await getter
            except asyncio.CancelledError:
                with contextlib.suppress(ValueError):
                    self._getters.remove(getter)
                if getter.done() and not getter.cancelled() and self._items:
                    self.put_nowait(self._take())  # pass the wake-up on
                raise
            if not self._getters:
                self._getters = None
        return self._take()


class TaggedQueue:
    """A producer's view of a connection's single inbox: ``put`` files items under a kind,
    so one task serves subscriptions, unsubscriptions, publishes and the disconnect in the
    order they arrived (stock amqtt keeps four queues and four waiting tasks)."""

    __slots__ = ("_inbox", "_kind")

    def __init__(self, inbox: LeanQueue, kind: str) -> None:
        self._inbox, self._kind = inbox, kind

    def put_nowait(self, item: Any) -> None:
        self._inbox.put_nowait((self._kind, item))

    async def put(self, item: Any) -> None:
        self._inbox.put_nowait((self._kind, item))

    # Draining a view (amqtt does it on stop and on session delete) is a no-op: the inbox
    # goes away with its connection.
    def empty(self) -> bool:
        return True

    def qsize(self) -> int:
        return 0

    def get_nowait(self) -> Any:
        raise asyncio.QueueEmpty
