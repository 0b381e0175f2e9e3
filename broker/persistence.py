"""What the embedded broker keeps across a restart, including ``kill -9``:

- retained messages (each club's current snapshot, the service's status);
- persistent sessions (clean session = false, named users only): their subscriptions, and
  every QoS 1/2 message on its way to them: waiting (offline, or behind a full in-flight
  window) or in flight (sent, not yet acknowledged: restored with its packet id, and resent
  with DUP=1 on reconnect). So the scorer service's subscription to the commands exists again
  as soon as the broker is back, and a board's presses that arrive before the service
  reconnects wait for it, as on mosquitto.

Why our own store rather than amqtt's ``SessionDBPlugin``: that plugin runs an SQLAlchemy ORM
select + flush per retained message on the event loop (measured: ~5 ms of CPU per retained
publish against < 1 ms here, docs/broker.md), decodes queued payloads as text (binary
payloads break it), restores subscriptions without their user (so an ACL refuses them) and,
with its defaults, deletes everything on a clean shutdown. Here: a stdlib SQLite file in WAL
mode, written from one worker thread; the changes of a burst go in one transaction.

Durability: WAL with ``synchronous=NORMAL`` keeps every committed transaction when the process
dies (``kill -9``); only a power cut can lose the last ones. A change is committed a few
milliseconds after the broker made it, and the broker sends a publisher's PUBACK only once
the rows that publish added for persistent sessions are committed (``when_stored``): what it
acknowledged survives ``kill -9``. A message's row is deleted when its subscriber acknowledges
it (PUBACK, or PUBCOMP for QoS 2). Loading is bounded per session like the live queues
(``QueueLimits``): the oldest rows within the bound are kept, the rest deleted and logged.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from amqtt.broker import BrokerContext, RetainedApplicationMessage
from amqtt.plugins.base import BasePlugin
from amqtt.session import Session

from broker.hardening import QueueLimits

log = logging.getLogger("rallycast.broker.persistence")

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS retained"
    " (topic TEXT PRIMARY KEY, payload BLOB NOT NULL, qos INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS subscriptions (client_id TEXT NOT NULL, username TEXT,"
    " filter TEXT NOT NULL, qos INTEGER NOT NULL, PRIMARY KEY (client_id, filter))",
    # packet_id: set while the message is in flight; released: QoS 2 PUBREC seen (PUBREL next)
    "CREATE TABLE IF NOT EXISTS queued (id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " client_id TEXT NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL,"
    " qos INTEGER NOT NULL, packet_id INTEGER, released INTEGER NOT NULL DEFAULT 0)",
    "CREATE INDEX IF NOT EXISTS queued_by_client ON queued (client_id)",
)
# Files written before in-flight messages were stored lack these columns.
QUEUED_COLUMNS = {"packet_id": "INTEGER", "released": "INTEGER NOT NULL DEFAULT 0"}

# One write: (SQL, parameters). Applied in order, a batch per transaction.
Write = tuple[str, tuple[Any, ...]]


class StoredMessage(NamedTuple):
    row: int
    topic: str
    payload: bytes
    qos: int
    packet_id: int | None  # in flight under this id; None: waiting
    released: bool


@dataclass
class StoredSession:
    client_id: str
    username: str | None
    subscriptions: list[tuple[str, int]]
    queued: list[StoredMessage] = field(default_factory=list)
    # First row past the session's bound (it and later rows are not loaded), and how many.
    first_dropped: int | None = None
    dropped: int = 0


# (client_id, username) -> (max messages, max payload bytes) of that session's queue
Bound = Callable[[str, "str | None"], tuple[int, int]]


class BrokerStore:
    """The SQLite file. Used from one thread at a time (the plugin's single worker)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        for statement in SCHEMA:
            self._db.execute(statement)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(queued)")}
        for name, kind in QUEUED_COLUMNS.items():
            if name not in columns:
                self._db.execute(f"ALTER TABLE queued ADD COLUMN {name} {kind}")

    def load_retained(self) -> dict[str, tuple[bytes, int]]:
        rows = self._db.execute("SELECT topic, payload, qos FROM retained")
        return {topic: (bytes(payload), qos) for topic, payload, qos in rows}

    def load_sessions(self, bound: Bound | None = None) -> list[StoredSession]:
        """Every stored session with its queue, oldest first; with ``bound``, at most that
        many messages and payload bytes per session (the first that does not fit and every
        later one are left out: counted in ``dropped``, not read into memory)."""
        sessions: dict[str, StoredSession] = {}
        for client_id, username, a_filter, qos in self._db.execute(
            "SELECT client_id, username, filter, qos FROM subscriptions ORDER BY client_id"
        ):
            stored = sessions.setdefault(client_id, StoredSession(client_id, username, []))
            stored.subscriptions.append((a_filter, qos))
        limits = {c: bound(c, s.username) if bound else (None, None) for c, s in sessions.items()}
        sizes = dict.fromkeys(sessions, 0)
        for row, client_id, size in self._db.execute(
            "SELECT id, client_id, length(payload) FROM queued ORDER BY id"
        ):
            stored = sessions.get(client_id)
            if stored is None:
                continue
            most, most_bytes = limits[client_id]
            if stored.dropped or (
                most is not None
                and (len(stored.queued) >= most or sizes[client_id] + size > most_bytes)
            ):
                if not stored.dropped:
                    stored.first_dropped = row
                stored.dropped += 1
                continue
            sizes[client_id] += size
            stored.queued.append(row)  # type: ignore[arg-type]  # replaced below
        for stored in sessions.values():
            rows = stored.queued
            stored.queued = []
            for start in range(0, len(rows), 500):
                chunk = rows[start : start + 500]
                marks = ",".join("?" * len(chunk))
                stored.queued.extend(
                    StoredMessage(r, t, bytes(p), q, i, bool(d))
                    for r, t, p, q, i, d in self._db.execute(
                        "SELECT id, topic, payload, qos, packet_id, released FROM queued"
                        f" WHERE id IN ({marks}) ORDER BY id",
                        chunk,
                    )
                )
        return list(sessions.values())

    def last_row(self) -> int:
        return int(self._db.execute("SELECT COALESCE(MAX(id), 0) FROM queued").fetchone()[0])

    def apply(self, writes: list[Write]) -> None:
        with self._db:  # one transaction
            self._db.execute("BEGIN")
            for sql, parameters in writes:
                self._db.execute(sql, parameters)

    def close(self) -> None:
        self._db.close()


def _persistent(session: Session | None) -> bool:
    return bool(session and session.clean_session is False and not session.is_anonymous)


class PersistencePlugin(BasePlugin[BrokerContext]):
    """Restores the store before the listeners open; writes every change behind. Also the
    broker's :class:`broker.hardening.MessageStore` (``queue_*``, ``when_stored``)."""

    @dataclass
    class Config:
        file: str = "broker.db"
        # QueueLimits, for loading (the broker gets the same numbers: broker/server.py)
        max_queued_messages: int = QueueLimits.messages
        max_queued_bytes: int = QueueLimits.bytes
        service_user: str | None = None
        service_max_queued_messages: int = QueueLimits.service_messages
        service_max_queued_bytes: int = QueueLimits.service_bytes

    def __init__(self, context: BrokerContext) -> None:
        super().__init__(context)
        self._store = BrokerStore(Path(self.config.file))
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="broker-store")
        self._pending: list[Write] = []
        self._flusher: asyncio.Task[None] | None = None
        self._next_row = self._store.last_row() + 1
        # Writes made so far / committed so far, and callbacks waiting for a commit.
        self._written = 0
        self._committed = 0
        self._waiting: deque[tuple[int, Callable[[], None]]] = deque()
        config = self.config
        self.limits = QueueLimits(
            config.max_queued_messages,
            config.max_queued_bytes,
            config.service_user,
            config.service_max_queued_messages,
            config.service_max_queued_bytes,
        )

    # -- restore (amqtt clears its state in start() just before PRE_START and opens the
    # listeners just after it: no client can see the broker half-restored)

    async def on_broker_pre_start(self) -> None:
        retained = self.context.retained_messages
        for topic, (payload, qos) in self._store.load_retained().items():
            retained[topic] = RetainedApplicationMessage(None, topic, payload, qos)
        sessions = self._store.load_sessions(self.limits.for_session)
        for stored in sessions:
            await self.context.add_subscription(stored.client_id, None, None)
            session = self.context.get_session(stored.client_id)
            if session is None:
                continue
            # The user matters: the ACL checks each restored subscription as theirs.
            session.username = stored.username
            session.clean_session = False
            session.is_anonymous = False
            for a_filter, qos in stored.subscriptions:
                await self.context.add_subscription(stored.client_id, a_filter, qos)
            # The broker's Outbox for this session takes these (RallycastBroker.outbox_of).
            session.restored_queue = stored.queued  # type: ignore[attr-defined]
            if stored.dropped:
                log.warning(
                    "queue of %s holds more than its bound: loaded %d message(s), dropped the"
                    " %d newest",
                    stored.client_id,
                    len(stored.queued),
                    stored.dropped,
                )
                self._write(
                    "DELETE FROM queued WHERE client_id = ? AND id >= ?",
                    stored.client_id,
                    stored.first_dropped,
                )
        log.info(
            "restored %d retained message(s) and %d persistent session(s) (%d queued"
            " message(s)) from %s",
            len(retained),
            len(sessions),
            sum(len(s.queued) for s in sessions),
            self._store.path,
        )

    # -- the broker's MessageStore

    def queue_add(
        self, client_id: str, topic: str, payload: bytes, qos: int, packet_id: int | None
    ) -> int:
        row = self._next_row
        self._next_row += 1
        self._write(
            "INSERT INTO queued (id, client_id, topic, payload, qos, packet_id)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            row,
            client_id,
            topic,
            payload,
            qos,
            packet_id,
        )
        return row

    def queue_sent(self, row: int, packet_id: int, released: bool) -> None:
        self._write(
            "UPDATE queued SET packet_id = ?, released = ? WHERE id = ?",
            packet_id,
            int(released),
            row,
        )

    def queue_done(self, row: int) -> None:
        self._write("DELETE FROM queued WHERE id = ?", row)

    def queue_clear(self, client_id: str) -> None:
        self._write("DELETE FROM queued WHERE client_id = ?", client_id)

    def when_stored(self, callback: Callable[[], None]) -> None:
        if self._committed >= self._written:
            callback()
        else:
            self._waiting.append((self._written, callback))

    # -- changes

    def _write(self, sql: str, *parameters: Any) -> None:
        self._pending.append((sql, parameters))
        self._written += 1
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def on_broker_retained_message(
        self, *, client_id: str | None, retained_message: RetainedApplicationMessage
    ) -> None:
        if client_id is not None:
            return  # queued for a session: the broker writes those through queue_add
        data, topic, qos = retained_message.data, retained_message.topic, retained_message.qos
        if data:
            self._write(
                "INSERT INTO retained (topic, payload, qos) VALUES (?, ?, ?) ON CONFLICT(topic)"
                " DO UPDATE SET payload = excluded.payload, qos = excluded.qos",
                topic,
                bytes(data),
                qos or 0,
            )
        else:  # an empty retained payload clears the topic
            self._write("DELETE FROM retained WHERE topic = ?", topic)

    async def on_broker_client_connected(self, *, client_id: str, client_session: Session) -> None:
        if client_session.is_anonymous:
            return  # never stored: amqtt keeps no session for anonymous clients
        if _persistent(client_session):
            self._write(
                "UPDATE subscriptions SET username = ? WHERE client_id = ?",
                client_session.username,
                client_id,
            )
        else:  # a clean session ends any stored one (the broker cleared its queue already)
            self._write("DELETE FROM subscriptions WHERE client_id = ?", client_id)
            self._write("DELETE FROM queued WHERE client_id = ?", client_id)

    async def on_broker_client_subscribed(self, *, client_id: str, topic: str, qos: int) -> None:
        session = self.context.get_session(client_id)
        if _persistent(session):
            assert session is not None
            self._write(
                "INSERT INTO subscriptions (client_id, username, filter, qos) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(client_id, filter) DO UPDATE SET qos = excluded.qos,"
                " username = excluded.username",
                client_id,
                session.username,
                topic,
                qos,
            )

    async def on_broker_client_unsubscribed(self, *, client_id: str, topic: str) -> None:
        self._write(
            "DELETE FROM subscriptions WHERE client_id = ? AND filter = ?", client_id, topic
        )

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending, []
            upto = self._written
            try:
                await loop.run_in_executor(self._worker, self._store.apply, batch)
            except sqlite3.Error as exc:
                log.error(
                    "could not store %d broker change(s): %s; messages acknowledged meanwhile"
                    " are lost if the broker stops before they are delivered",
                    len(batch),
                    exc,
                )
            self._committed = upto
            while self._waiting and self._waiting[0][0] <= upto:
                self._waiting.popleft()[1]()

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        if self._pending:
            await self._flush()
        await asyncio.get_running_loop().run_in_executor(self._worker, self._store.close)
        self._worker.shutdown(wait=True)
