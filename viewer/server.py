"""Running the pages: uvicorn around :func:`viewer.app.create_app` (``rallycast viewer``; also
run in-process by ``rallycast up``), started within the caller's event loop and stopped
within :data:`STOP_WITHIN` seconds."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
import weakref
from dataclasses import dataclass, replace

import uvicorn

from scorer.client import add_url_flag, join_urls, parse_broker_url
from scorer.config import Settings, bind_description, load_settings, local_host, url_host
from scorer.logs import setup_logging
from viewer.app import create_app
from viewer.snapshots import viewer_broker_url

log = logging.getLogger("rallycast.viewer")

STOP_WITHIN = 0.8  # seconds: `rallycast up` promises to stop within 2 s


@dataclass
class RunningViewer:
    """A viewer started by :func:`start_viewer`; ``port`` is the real one when settings say 0."""

    server: uvicorn.Server
    task: asyncio.Task[None]
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{url_host(local_host(self.host))}:{self.port}"

    async def stop(self, within: float = STOP_WITHIN) -> None:
        """Stop serving within about ``within`` seconds (0.3 s more when cut short): uvicorn's
        graceful stop first; then the requests still running are cancelled (each answered
        500 or dropped) and the lifespan's shutdown (the viewer's MQTT client) still runs.
        A shutdown stuck past that is left to the caller's loop to cancel."""
        self.server.should_exit = True
        done, _ = await asyncio.wait({self.task}, timeout=within)
        if not done:
            # What uvicorn does itself after timeout_graceful_shutdown. Its force_exit would
            # leave those requests running and skip the lifespan's shutdown.
            for task in list(self.server.server_state.tasks):
                task.cancel("the viewer is stopping")
            await asyncio.wait({self.task}, timeout=0.3)
        if self.task.done() and not self.task.cancelled():
            self.task.exception()  # seen: a stop is not an error to report later


class _Server(uvicorn.Server):
    """uvicorn's server, knowing the event loop it serves in (for :func:`_not_a_stop`)."""

    loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)


# The servers this process started (uvicorn_server): whether the one serving in the logging
# thread's loop is stopping tells a request cancelled by a stop from one cancelled by a fault.
_SERVERS: weakref.WeakSet[_Server] = weakref.WeakSet()


def _stopping_here() -> bool:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return False
    return any(server.loop is loop and server.should_exit for server in _SERVERS)


def _not_a_stop(record: logging.LogRecord) -> bool:
    """uvicorn logs the lifespan task's CancelledError (and a KeyboardInterrupt) as an ERROR
    with a traceback (as text, uvicorn/lifespan/on.py) when a stop cancels it mid-shutdown,
    and "Cancel N running task(s), timeout graceful shutdown exceeded" when a stop cuts slow
    requests short (uvicorn/server.py): that is a stop, not an error. A request's task
    cancelled ("Exception in ASGI application") is a stop only while its server is
    stopping; otherwise it is a fault that answered 500, and is kept."""
    if record.getMessage().endswith("timeout graceful shutdown exceeded"):
        return False
    error = record.exc_info[1] if record.exc_info else None
    if isinstance(error, asyncio.CancelledError | KeyboardInterrupt):
        if not str(record.msg).startswith("Exception in ASGI application"):
            return False
        return not _stopping_here()
    text = str(record.msg)
    return not (
        text.startswith("Traceback")
        and text.rstrip().rsplit("\n", 1)[-1].strip()
        in ("asyncio.exceptions.CancelledError", "KeyboardInterrupt")
    )


def uvicorn_server(settings: Settings) -> uvicorn.Server:
    config = uvicorn.Config(
        create_app(settings),
        host=settings.bind,
        port=settings.http_port,
        log_level=settings.log_level.lower(),
        log_config=None,  # the process's logging setup stays as it is (rallycast up embeds us)
        access_log=False,
        lifespan="on",  # starts and stops the viewer's own MQTT client
        proxy_headers=True,
        timeout_graceful_shutdown=0.5,  # open connections, then forced (STOP_WITHIN)
    )
    error_log = logging.getLogger("uvicorn.error")
    if _not_a_stop not in error_log.filters:
        error_log.addFilter(_not_a_stop)
    if settings.log_level.upper() != "DEBUG":
        # "Uvicorn running on ... (Press CTRL+C to quit)" is not true inside `rallycast up`:
        # the viewer logs its own URL; uvicorn keeps its warnings and errors.
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    server = _Server(config)
    _SERVERS.add(server)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # the caller owns signals
    return server


def bound_port(server: uvicorn.Server) -> int:
    return int(server.servers[0].sockets[0].getsockname()[1])


async def _run_uvicorn(server: uvicorn.Server, where: str) -> None:
    try:
        await server.serve()
    except SystemExit:
        # uvicorn calls sys.exit when it cannot start (e.g. the port is taken); a SystemExit
        # escaping a task would stop the whole event loop of `rallycast up`. uvicorn keeps
        # the OSError to itself: binding again tells which (port in use, no such address).
        raise _bind_error(server.config.host, server.config.port, where) from None


def _bind_error(host: str, port: int, where: str) -> OSError:
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind((host, port))
    except OSError as exc:
        return OSError(exc.errno, f"the viewer could not listen on {where}: {exc.strerror}")
    return OSError(f"the viewer could not listen on {where}")


async def start_viewer(settings: Settings) -> RunningViewer:
    """Start the web server in the running loop; returns once it listens."""
    server = uvicorn_server(settings)
    task = asyncio.create_task(_run_uvicorn(server, f"{settings.bind}:{settings.http_port}"))
    while not server.started:
        if task.done():
            await task  # raises the OSError
            raise OSError("the viewer stopped before it started")
        await asyncio.sleep(0.01)
    running = RunningViewer(server, task, settings.bind, bound_port(server))
    log.info(
        "pages listening on %s, port %d (%s from this machine)",
        bind_description(settings.bind),
        running.port,
        running.url,
    )
    return running


async def serve(settings: Settings, ready: asyncio.Event | None = None) -> None:
    """Serve the pages until cancelled (``rallycast up`` runs this beside the broker)."""
    running = await start_viewer(settings)
    if ready is not None:
        ready.set()
    try:
        await running.task
    finally:
        if not running.task.done():
            await running.stop()


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bind", help="address to listen on (default: settings.bind)")
    parser.add_argument("--http-port", type=int, help="HTTP port (0 = any free port)")
    parser.add_argument("--ws-port", type=int, help="the broker's WebSocket port the pages use")
    parser.add_argument(
        "--public-ws-url",
        action="append",
        help="WebSocket URL the pages use (behind a proxy); a cluster's nodes as a"
        " comma-separated list or the option once per node",
    )
    add_url_flag(
        parser,
        help="the broker whose retained snapshots give each page its first score, as a"
        " spectator (default: the broker_url setting; user and password are not used)",
    )


def browser_ws(settings: Settings) -> str:
    """Where the browsers' mqtt.js connects, in words for the start line."""
    if settings.public_ws_url:
        return settings.public_ws_url
    return f"ws://<the page's host>:{settings.ws_port}/mqtt"


def main(args: argparse.Namespace) -> int:
    overrides = {
        "broker_url": join_urls(args.url),
        "bind": args.bind,
        "http_port": args.http_port,
        "ws_port": args.ws_port,
        "public_ws_url": join_urls(args.public_ws_url),
    }
    settings = load_settings(args.config, overrides=overrides)
    setup_logging(settings.log_level)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        running = await start_viewer(settings)
        print(
            f"Rallycast pages on {running.url}/ (listening on {bind_description(settings.bind)},"
            f" port {running.port})",
            flush=True,
        )
        for club in settings.clubs:
            print(f"  {club.name}: {running.url}/clubs/{club.id}", flush=True)
        # As the viewer connects: a spectator, so without the URL's user and password.
        following = replace(parse_broker_url(viewer_broker_url(settings)), user=None)
        print(
            f"  first scores from {following.url()}; browsers use {browser_ws(settings)}",
            flush=True,
        )
        # Ctrl-C / SIGTERM: a quiet stop (no KeyboardInterrupt through the event loop).
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({running.task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not running.task.done():
            await running.stop()
        else:
            await running.task  # it ended by itself: say why

    try:
        asyncio.run(run())
        print("rallycast viewer: stopped", flush=True)
    except KeyboardInterrupt:
        print("rallycast viewer: stopped", flush=True)
    except OSError as exc:
        from broker.startup import listen_failure

        failure = listen_failure(
            exc, settings.http_port, "--http-port", "web server", settings.bind
        )
        print(f"rallycast viewer: {failure}", file=sys.stderr)
        return 1
    return 0
