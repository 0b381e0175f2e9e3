"""The service tests' own tools: what they promise is what the fault tests rely on."""

import socket
import time

import pytest

from tests.scorer.servicekit import FreezableProxy

ROUNDS = 20  # the leak was a race between close() and the pump thread: try it many times


def _held_bytes_after_close(upstream: bool) -> bytes:
    """Freeze, send a chunk the proxy holds, close the proxy: what reaches the far side."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        proxy = FreezableProxy("127.0.0.1", server.getsockname()[1], upstream=upstream)
        try:
            near = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
            far, _ = server.accept()
        except BaseException:
            proxy.close()
            raise
        with near, far:
            sender, receiver = (near, far) if upstream else (far, near)
            proxy.freeze()
            sender.sendall(b"held")
            time.sleep(0.02)  # usually read by the pump by now; held either way
            proxy.close()
            receiver.settimeout(5)
            got = b""
            try:  # the proxy's close ends the connection: read until then
                while chunk := receiver.recv(64):
                    got += chunk
            except OSError:
                pass
            return got


@pytest.mark.parametrize("upstream", [True, False], ids=["upstream", "downstream"])
def test_a_frozen_proxy_forwards_nothing_it_held_when_it_is_closed(upstream: bool) -> None:
    """A kill -9 test closes the proxy to stand for the dead process's connection: bytes held
    by the freeze must die with it (loop run B2 on 457a7a9: a held reply reached the scorer
    and its PUBACK did not, so the restarted service's answer to the redelivery was a second
    reply)."""
    leaked = [got for got in (_held_bytes_after_close(upstream) for _ in range(ROUNDS)) if got]
    assert not leaked, f"{len(leaked)} of {ROUNDS} closes forwarded held bytes: {leaked[:3]}"


def test_a_closed_proxy_wakes_its_frozen_pumps_to_stop_not_to_forward() -> None:
    """The same promise without the race: once closed, a pump woken from the freeze stops."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        proxy = FreezableProxy("127.0.0.1", server.getsockname()[1], upstream=True)
        proxy.freeze()
        proxy.close()
        assert proxy._flowing() is False


def test_a_closed_proxy_ends_the_brokers_side_even_when_a_pump_closed_it_first() -> None:
    """close() wakes a frozen pump, which closes its two sockets on the way out; the other
    pump may still be blocked reading one of them, and a socket closed under a blocked read
    stays connected (Linux). The broker then saw the dead service only at keep-alive: loop
    run B1 on c870b6a waited 20 s for the last will on mosquitto, which counts 1.5 keep-alives
    in whole seconds. Here the pump goes first every time."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        proxy = FreezableProxy("127.0.0.1", server.getsockname()[1], upstream=True)
        near = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        far, _ = server.accept()
        with near, far:
            deadline = time.monotonic() + 10
            while len(proxy._sockets) < 2:
                assert time.monotonic() < deadline, "the proxy did not connect"
                time.sleep(0.01)
            proxy.freeze()
            near.sendall(b"held")  # the upstream pump reads it and waits in the freeze
            time.sleep(0.2)
            proxy.closed.set()  # close()'s first steps: the frozen pump wakes and stops
            proxy.flowing.set()
            while any(sock.fileno() != -1 for sock in proxy._sockets):
                assert time.monotonic() < deadline, "the woken pump did not stop"
                time.sleep(0.01)
            proxy.close()  # its shutdown() finds them closed already
            far.settimeout(5)
            try:
                assert far.recv(64) == b"", "bytes from a closed proxy"
            except TimeoutError:
                pytest.fail("the broker's side of a closed proxy is still connected")
            except ConnectionResetError:
                pass  # ended too
