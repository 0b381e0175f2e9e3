"""What the embedded broker keeps across a restart, including ``kill -9``:

- retained messages (each club's current snapshot, the service's status);
- persistent sessions (clean session = false, named users only): their subscriptions, and the
  QoS 1/2 messages queued for them while they are offline. So the scorer service's
  subscription to the commands exists again as soon as the broker is back, and a board's
  presses that arrive before the service reconnects wait for it, as on mosquitto.

Why our own store rather than amqtt's ``SessionDBPlugin``: that plugin runs an SQLAlchemy ORM
select + flush per retained message on the event loop (measured: ~5 ms of CPU per retained
publish against < 1 ms here, docs/broker.md), decodes queued payloads as text (binary
payloads break it), restores subscriptions without their user (so an ACL refuses them) and,
with its defaults, deletes everything on a clean shutdown. Here: a stdlib SQLite file in WAL
mode, written from one worker thread; the changes of a burst go in one transaction.

Durability: WAL with ``synchronous=NORMAL`` keeps every committed transaction when the process
dies (``kill -9``); only a power cut can lose the last ones. A change is committed a few
milliseconds after the broker made it. Messages queued for an offline session are dropped
from the file when that session reconnects (the broker then sends them).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amqtt.broker import BrokerContext, RetainedApplicationMessage
from amqtt.plugins.base import BasePlugin
from amqtt.session import Session

log = logging.getLogger("rallycast.broker.persistence")

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS retained"
    " (topic TEXT PRIMARY KEY, payload BLOB NOT NULL, qos INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS subscriptions (client_id TEXT NOT NULL, username TEXT,"
    " filter TEXT NOT NULL, qos INTEGER NOT NULL, PRIMARY KEY (client_id, filter))",
    "CREATE TABLE IF NOT EXISTS queued (id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " client_id TEXT NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL,"
    " qos INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS queued_by_client ON queued (client_id)",
)

# One write: (SQL, parameters). Applied in order, a batch per transaction.
Write = tuple[str, tuple[Any, ...]]


@dataclass
class StoredSession:
    client_id: str
    username: str | None
    subscriptions: list[tuple[str, int]]
    queued: list[tuple[str, bytes, int]]


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

    def load_retained(self) -> dict[str, tuple[bytes, int]]:
        rows = self._db.execute("SELECT topic, payload, qos FROM retained")
        return {topic: (bytes(payload), qos) for topic, payload, qos in rows}

    def load_sessions(self) -> list[StoredSession]:
        sessions: dict[str, StoredSession] = {}
        for client_id, username, a_filter, qos in self._db.execute(
            "SELECT client_id, username, filter, qos FROM subscriptions ORDER BY client_id"
        ):
            stored = sessions.setdefault(client_id, StoredSession(client_id, username, [], []))
            stored.subscriptions.append((a_filter, qos))
        for client_id, topic, payload, qos in self._db.execute(
            "SELECT client_id, topic, payload, qos FROM queued ORDER BY id"
        ):
            if client_id in sessions:
                sessions[client_id].queued.append((topic, bytes(payload), qos))
        return list(sessions.values())

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
    """Restores the store before the listeners open; writes every change behind."""

    @dataclass
    class Config:
        file: str = "broker.db"

    def __init__(self, context: BrokerContext) -> None:
        super().__init__(context)
        self._store = BrokerStore(Path(self.config.file))
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="broker-store")
        self._pending: list[Write] = []
        self._flusher: asyncio.Task[None] | None = None

    # -- restore (amqtt clears its state in start() just before PRE_START and opens the
    # listeners just after it: no client can see the broker half-restored)

    async def on_broker_pre_start(self) -> None:
        retained = self.context.retained_messages
        for topic, (payload, qos) in self._store.load_retained().items():
            retained[topic] = RetainedApplicationMessage(None, topic, payload, qos)
        sessions = self._store.load_sessions()
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
            for topic, payload, qos in stored.queued:
                session.retained_messages.put_nowait(
                    RetainedApplicationMessage(None, topic, payload, qos)
                )
        log.info(
            "restored %d retained message(s) and %d persistent session(s) from %s",
            len(retained),
            len(sessions),
            self._store.path,
        )

    # -- changes

    def _write(self, sql: str, *parameters: Any) -> None:
        self._pending.append((sql, parameters))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def on_broker_retained_message(
        self, *, client_id: str | None, retained_message: RetainedApplicationMessage
    ) -> None:
        data, topic, qos = retained_message.data, retained_message.topic, retained_message.qos
        if client_id is not None:  # queued for an offline persistent session
            if data and _persistent(self.context.get_session(client_id)):
                self._write(
                    "INSERT INTO queued (client_id, topic, payload, qos) VALUES (?, ?, ?, ?)",
                    client_id,
                    topic,
                    bytes(data),
                    qos or 0,
                )
            return
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
        # The broker sends the queued messages now; a clean session also ends the old one.
        self._write("DELETE FROM queued WHERE client_id = ?", client_id)
        if _persistent(client_session):
            self._write(
                "UPDATE subscriptions SET username = ? WHERE client_id = ?",
                client_session.username,
                client_id,
            )
        else:
            self._write("DELETE FROM subscriptions WHERE client_id = ?", client_id)

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
            try:
                await loop.run_in_executor(self._worker, self._store.apply, batch)
            except sqlite3.Error as exc:
                log.error("could not store %d broker change(s): %s", len(batch), exc)

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        if self._pending:
            await self._flush()
        await asyncio.get_running_loop().run_in_executor(self._worker, self._store.close)
        self._worker.shutdown(wait=True)
