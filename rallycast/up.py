"""``rallycast up``: everything on one machine in one process — the embedded broker, the
scorer service and the live pages — working with no configuration at all.

On first start it creates the data dir, the scorer credentials of each configured club (the
`demo` club by default; the password is printed once and only its hash is kept) and the
service's own secret (data_dir/service.secret), then prints what to open and what to type.

Under systemd (``$INVOCATION_ID`` set) or with ``--passwords-file FILE``, new passwords are
not printed (stdout is the journal there, which keeps lines for weeks and which every member
of group adm may read): they are appended to a file only the running user may read
(data_dir/new-passwords by default), and the log says where.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import fcntl
import logging
import os
import secrets
import shlex
import shutil
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker.startup import StartFailed, listen_failure, start_broker_plainly
from scorer.config import (
    Settings,
    add_setting_flags,
    bind_description,
    default_data_dir,
    load_settings,
    setting_overrides,
)
from scorer.datadir_lock import DataDirInUse, lock_data_dir
from scorer.logs import setup_logging
from scorer.service import ScorerService, ensure_service_secret

if TYPE_CHECKING:
    from broker.server import RunningBroker

log = logging.getLogger("rallycast.up")

PASSWORDS_FILE_NAME = "new-passwords"
STOP_BUDGET = 1.5  # seconds for a clean stop after Ctrl-C / SIGTERM (promise: within 2 s)
SERVICE_CONNECT_TIMEOUT = 10.0


@dataclass
class Credentials:
    service_password: str
    new_club_passwords: dict[str, str]  # club id -> clear password, only those created now


def ensure_credentials(settings: Settings) -> Credentials:
    """The service's user and each configured club's scorer user exist in the password file.
    New club passwords are returned (to be shown once); existing ones are left alone."""
    from broker.auth import PasswordFile

    passwords = PasswordFile(settings.password_file)
    secret = ensure_service_secret(settings.data_dir)
    # A secret file written by hand (or a restored data dir) must match the stored hash.
    if not passwords.verify(settings.service_user, secret):
        passwords.set(settings.service_user, secret)
    known = set(passwords.users())
    created: dict[str, str] = {}
    for club in settings.clubs:
        if club.id not in known:
            created[club.id] = secrets.token_urlsafe(12)
            passwords.set(club.id, created[club.id])
    return Credentials(secret, created)


def _rallycast_command() -> str:
    """How the user can type this program: plain ``rallycast`` when it is on PATH, else the
    path it was started by (``./dev up`` runs .venv/bin/rallycast, which is not on PATH)."""
    started_as = os.path.abspath(sys.argv[0])
    on_path = shutil.which("rallycast")
    if on_path and os.path.samefile(on_path, started_as):
        return "rallycast"
    return started_as if os.path.basename(started_as) == "rallycast" else "rallycast"


def passwd_command(settings: Settings, club_id: str, rallycast: str = "rallycast") -> str:
    """The command that gives ``club_id`` a new password in THIS data dir: ``rallycast passwd``
    alone writes to the default one, which is not the one a ``--data-dir``, ``--config`` or
    ``RALLYCAST_DATA_DIR`` start uses."""
    command = f"{rallycast} passwd add {club_id} --generate"
    if settings.data_dir.expanduser().resolve() != default_data_dir().resolve():
        command += f" --data-dir {shlex.quote(str(settings.data_dir))}"
    return command


def new_passwords_notice(credentials: Credentials) -> str:
    """The club passwords created now, printed at once: they exist only here and in the
    output, so they must be shown even if starting fails afterwards."""
    lines = ["New scorer passwords (shown only once: write them down):"]
    for club_id, password in sorted(credentials.new_club_passwords.items()):
        lines.append(f"  scorer login: user {club_id} password {password}")
    return "\n".join(lines)


def under_systemd(environ: dict[str, str] | None = None) -> bool:
    """systemd sets $INVOCATION_ID for every process of a unit (systemd.exec(5))."""
    return bool((os.environ if environ is None else environ).get("INVOCATION_ID"))


def write_new_passwords(path: Path, credentials: Credentials) -> Path:
    """Append the new club passwords to ``path``, mode 0600 (also when it existed with another
    mode), one ``scorer login: user ID password PW`` line each under a dated comment; appended,
    so passwords of an earlier start that nobody has noted yet stay. Returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as handle:
        os.fchmod(handle.fileno(), 0o600)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S %z")
        handle.write(f"# {stamp} rallycast up: new scorer passwords\n")
        for club_id, password in sorted(credentials.new_club_passwords.items()):
            handle.write(f"scorer login: user {club_id} password {password}\n")
        handle.flush()
        os.fsync(handle.fileno())
    return path


def passwords_file_notice(path: Path, credentials: Credentials) -> str:
    clubs = ", ".join(sorted(credentials.new_club_passwords))
    return (
        f"New scorer passwords (clubs {clubs}) written to {path}, readable by this user only "
        "(not printed: this output is a log). Note them, then delete the file."
    )


def banner(
    settings: Settings,
    credentials: Credentials,
    broker: RunningBroker,
    http_url: str | None,
    passwords_file: Path | None = None,
) -> str:
    """What ``up`` prints once it runs. With ``passwords_file`` a new password is not shown:
    the banner points at that file."""
    rallycast = _rallycast_command()
    ids = secrets.token_hex(2)  # a prefix new to this start: ids of earlier starts are used
    host, mqtt_port = broker.host, broker.mqtt_port  # mosquitto_pub -h takes IPv6 bare
    lines = ["", "Rallycast is running.", ""]
    lines.append(f"  MQTT broker:  {broker.mqtt_url}   WebSocket: {broker.ws_url}")
    ports = f"MQTT {broker.mqtt_port}, WebSocket {broker.ws_port}"
    if http_url is not None:
        ports += f", pages {http_url.rsplit(':', 1)[1]}"
    lines.append(f"  Listening on: {bind_description(settings.bind)} (ports {ports})")
    lines.append(f"  Data dir:     {settings.data_dir.expanduser().resolve()}")
    if http_url is None:
        lines.append("  Live pages:   not available (the viewer package is not installed)")
    for club in settings.clubs:
        lines.append("")
        lines.append(f"Club {club.name!r} (id {club.id}):")
        if http_url is not None:
            base = f"{http_url}/clubs/{club.id}"
            lines.append(f"  club page:  {base}")
            lines.append(f"  scorer:     {base}/score")
            lines.append(f"  display:    {base}/display")
            lines.append(f"  overlay:    {base}/overlay")
        password = credentials.new_club_passwords.get(club.id)
        if password is not None and passwords_file is not None:
            lines.append(f"  scorer login: user {club.id}, new password in {passwords_file}")
        elif password is not None:
            lines.append(f"  scorer login: user {club.id} password {password}")
            lines.append(
                f"  (shown only now: write it down; a new one: "
                f"{passwd_command(settings, club.id, rallycast)})"
            )
        else:
            lines.append(
                f"  scorer login: user {club.id}, password set at first start "
                f"(forgotten? {passwd_command(settings, club.id, rallycast)})"
            )
        # The shell fills in "$PASSWORD": the password is printed once, above, and never
        # as a word the commands would send literally.
        lines.append("  score from a terminal (with PASSWORD set to the scorer password):")
        lines.append(
            f"    {rallycast} score --club {club.id} --url {broker.mqtt_url} "
            f'--user {club.id} --password "$PASSWORD"'
        )
        lines.append("  or with mosquitto-clients:")
        lines.append(f"    mosquitto_sub -h {host} -p {mqtt_port} -t clubs/{club.id}/game -v")
        # An id applies once per club, across matches and restarts: ids new to this start.
        lines.append(
            f'    mosquitto_pub -h {host} -p {mqtt_port} -u {club.id} -P "$PASSWORD" -q 1 '
            f'-t clubs/{club.id}/game/cmd -m \'{{"id": "{ids}-s1", "cmd": "start", '
            f'"player1": "Ann", "player2": "Bob"}}\''
        )
        lines.append(
            f'    mosquitto_pub -h {host} -p {mqtt_port} -u {club.id} -P "$PASSWORD" -q 1 '
            f'-t clubs/{club.id}/game/cmd -m \'{{"id": "{ids}-p1", "cmd": "point", "side": 1}}\''
        )
        lines.append(
            f"    (use a new id per press: {ids}-p2, {ids}-p3, ...; the service applies an id"
            " once per club, so a reused id only gets its first reply again)"
        )
    if settings.bind in ("", "0.0.0.0", "::"):
        lines.append("")
        addresses = ipv4_addresses()
        example = f" ({', '.join(addresses)})" if addresses else ""
        lines.append(f"From other devices use this machine's address{example} instead of {host}.")
    elif settings.local_host.startswith("127.") or settings.local_host in ("::1", "localhost"):
        lines.append("")
        lines.append(
            f"Other devices cannot connect: it listens on {settings.bind} only "
            "(--bind 0.0.0.0 listens on all interfaces)."
        )
    lines.append("")
    lines.append("Stop with Ctrl-C.")
    return "\n".join(lines)


SIOCGIFADDR = 0x8915  # Linux netdevice(7): an interface's IPv4 address


def ipv4_addresses() -> list[str]:
    """This machine's non-loopback IPv4 addresses, read from its interfaces (netdevice(7));
    no outside lookups. Empty where the ioctl is not available."""
    found: list[str] = []
    try:
        names = [name for _, name in socket.if_nameindex()]
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        return found
    with probe:
        for name in names:
            try:
                packed = fcntl.ioctl(
                    probe.fileno(), SIOCGIFADDR, struct.pack("256s", name[:15].encode())
                )
            except OSError:
                continue  # down, or no IPv4 address
            address = socket.inet_ntoa(packed[20:24])
            if not address.startswith("127.") and address not in found:
                found.append(address)
    return found


def check_ports_free(settings: Settings) -> None:
    """Bind-test each fixed port before anything is written (port 0 is always free): a clash
    is said before the data dir exists. Raises StartFailed (:func:`listen_failure`)."""
    host = settings.bind or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for port, flag, what in (
        (settings.mqtt_port, "--mqtt-port", "broker"),
        (settings.ws_port, "--ws-port", "broker"),
        (settings.http_port, "--http-port", "web server"),
    ):
        if not port:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
            try:
                probe.bind((host, port))
            except OSError as exc:
                if exc.errno in (errno.EACCES,):
                    continue  # a port below 1024 as a user: the real start says it better
                raise listen_failure(exc, port, flag, what, settings.bind) from exc


async def run_up(
    settings: Settings, stop: asyncio.Event, passwords_file: Path | None = None
) -> int:
    """Run everything until ``stop`` is set; returns the exit code. ``passwords_file``: new
    club passwords go there (see :func:`write_new_passwords`) instead of to stdout."""
    check_ports_free(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        # The scorer service takes scorer.lock itself when it starts (scorer/service.py).
        lock_data_dir(settings.data_dir, "broker", "rallycast up")
    except DataDirInUse as exc:
        raise StartFailed(str(exc)) from None
    credentials = await asyncio.to_thread(ensure_credentials, settings)
    if credentials.new_club_passwords and passwords_file is not None:
        try:
            write_new_passwords(passwords_file, credentials)
        except OSError as exc:
            # The passwords exist only here now: shown in the output rather than lost.
            log.error("cannot write %s (%s): printing the new passwords", passwords_file, exc)
            passwords_file = None
        else:
            print(passwords_file_notice(passwords_file, credentials), flush=True)
    try:
        broker = await start_broker_plainly(settings)  # StartFailed: said plainly by main()
    except BaseException:
        # The banner will not show the new passwords: they exist only here, so say them now.
        if credentials.new_club_passwords and passwords_file is None:
            print(new_passwords_notice(credentials), flush=True)
        raise
    # The real ports (settings may say 0); the pages need the real WebSocket port.
    settings = replace(
        settings, mqtt_port=broker.mqtt_port, ws_port=broker.ws_port, broker_url=broker.mqtt_url
    )
    service = ScorerService(
        settings,
        url=broker.mqtt_url,
        user=settings.service_user,
        password=credentials.service_password,
    )
    viewer: Any = None
    banner_shown = False
    try:
        service.start()
        if not await asyncio.to_thread(service.wait_until_connected, SERVICE_CONNECT_TIMEOUT):
            log.error("the scorer service could not connect to the embedded broker")
            return 1
        try:
            from viewer.server import start_viewer
        except ImportError as exc:
            log.warning("live pages not available: %s", exc)
        else:
            try:
                viewer = await start_viewer(settings)
            except OSError as exc:
                raise listen_failure(
                    exc, settings.http_port, "--http-port", "web server", settings.bind
                ) from exc
        print(
            banner(
                settings,
                credentials,
                broker,
                viewer.url if viewer is not None else None,
                passwords_file,
            ),
            flush=True,
        )
        banner_shown = True
        await stop.wait()
        return 0
    finally:
        if not banner_shown and credentials.new_club_passwords and passwords_file is None:
            print(new_passwords_notice(credentials), flush=True)
        await _shutdown(service, viewer, broker)


async def _shutdown(service: ScorerService, viewer: Any, broker: Any) -> None:
    async def stop_service_then_broker() -> None:
        # The service first, while the broker can still take its "offline".
        await asyncio.to_thread(service.stop, 0.3)
        await broker.stop()

    async def stop_all() -> None:
        parts = [stop_service_then_broker()] + ([viewer.stop()] if viewer is not None else [])
        await asyncio.gather(*parts, return_exceptions=True)

    started = time.monotonic()
    try:
        await asyncio.wait_for(stop_all(), STOP_BUDGET)
    except TimeoutError:
        log.warning("stopping took longer than %.1f s; leaving the rest to exit", STOP_BUDGET)
    log.debug("stopped in %.2f s", time.monotonic() - started)


UP_FLAGS = ("data_dir", "bind", "mqtt_port", "ws_port", "http_port")


def configure(parser: argparse.ArgumentParser) -> None:
    add_setting_flags(parser, *UP_FLAGS)
    parser.add_argument(
        "--passwords-file",
        metavar="FILE",
        help="append new scorer passwords to FILE (mode 0600) instead of printing them"
        f" (default under systemd: DATA_DIR/{PASSWORDS_FILE_NAME})",
    )


def main(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, overrides=setting_overrides(args, *UP_FLAGS))
    # Absolute from here on: the banner, the hints and the lock message name the real place.
    settings = replace(settings, data_dir=settings.data_dir.expanduser().resolve())
    setup_logging(settings.log_level)
    passwords_file = None
    if args.passwords_file:
        passwords_file = Path(args.passwords_file).expanduser()
    elif under_systemd():
        passwords_file = settings.data_dir / PASSWORDS_FILE_NAME

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        return await run_up(settings, stop, passwords_file)

    try:
        code = asyncio.run(run())
        if code == 0:
            print("rallycast up: stopped", flush=True)
    except StartFailed as exc:
        print(f"rallycast up: {exc}", file=sys.stderr, flush=True)
        code = 1
    except OSError as exc:
        print(f"rallycast up: cannot start: {exc}", file=sys.stderr, flush=True)
        code = 1
    # Everything is stopped and saved now. The interpreter's own teardown of the broker's,
    # web server's and SQLAlchemy's objects takes seconds on a loaded machine and would break
    # the "stops within 2 s" promise: flush what is buffered and leave.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
