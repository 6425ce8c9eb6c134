"""Tests of the fault-injection TCP proxy against a tiny local echo server."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from _proxy import TcpProxy

pytestmark = pytest.mark.timeout(60)


class EchoServer:
    """Echoes every byte back; on EOF from the client it closes its side."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = int(self._sock.getsockname()[1])
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._stopped = False
        self.connections = 0
        t = threading.Thread(target=self._accept_loop, daemon=True)
        t.start()
        self._threads.append(t)

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                if self._stopped:
                    conn.close()
                    return
                self.connections += 1
                self._conns.append(conn)
                t = threading.Thread(target=self._echo, args=(conn,), daemon=True)
                self._threads.append(t)
            t.start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                conn.sendall(data)
        except OSError:
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            conns = list(self._conns)
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(timeout=5)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.stop()


@pytest.fixture
def tcp_proxy(echo: EchoServer) -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", echo.port) as p:
        yield p
    assert p.errors == []


def connect(p: TcpProxy, timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", p.port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def is_closed(s: socket.socket, timeout: float = 5.0) -> bool:
    """True when the peer closed (FIN or RST) within ``timeout``."""
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def test_address_and_roundtrip(tcp_proxy: TcpProxy) -> None:
    host, port = tcp_proxy.address.rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) == tcp_proxy.port
    with connect(tcp_proxy) as s:
        s.sendall(b"hello")
        assert recv_exactly(s, 5) == b"hello"


def test_large_payload_both_directions(tcp_proxy: TcpProxy) -> None:
    payload = os.urandom(8 * 1024 * 1024 + 17)
    with connect(tcp_proxy, timeout=30) as s:
        # Send from another thread: the echo comes back while we are still sending.
        sender = threading.Thread(target=s.sendall, args=(payload,))
        sender.start()
        got = recv_exactly(s, len(payload))
        sender.join()
    assert got == payload


def test_many_concurrent_connections(tcp_proxy: TcpProxy) -> None:
    n = 50
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            with connect(tcp_proxy, timeout=20) as s:
                for j in range(20):
                    msg = f"{i}:{j}:".encode() * (1 + j * 50)
                    s.sendall(msg)
                    assert recv_exactly(s, len(msg)) == msg
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert tcp_proxy.accepted >= n


def test_half_close_is_passed_on(tcp_proxy: TcpProxy) -> None:
    with connect(tcp_proxy) as s:
        s.sendall(b"last words")
        s.shutdown(socket.SHUT_WR)
        assert recv_exactly(s, 10) == b"last words"
        assert is_closed(s)
    deadline = time.monotonic() + 5
    while tcp_proxy.connection_count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert tcp_proxy.connection_count == 0


def test_pause_blackholes_and_resume_delivers_buffered_data(tcp_proxy: TcpProxy) -> None:
    with connect(tcp_proxy) as s:
        s.sendall(b"before")
        assert recv_exactly(s, 6) == b"before"

        tcp_proxy.pause()
        assert tcp_proxy.paused
        s.sendall(b"during pause")  # goes into socket buffers, not through
        s.settimeout(0.5)
        with pytest.raises(socket.timeout):
            s.recv(100)

        tcp_proxy.resume()
        assert not tcp_proxy.paused
        s.settimeout(5)
        assert recv_exactly(s, 12) == b"during pause"


def test_pause_holds_new_connections_until_resume(tcp_proxy: TcpProxy, echo: EchoServer) -> None:
    tcp_proxy.pause()
    before = echo.connections
    # The kernel completes the handshake (listen backlog), but nothing is forwarded.
    s = connect(tcp_proxy)
    try:
        s.sendall(b"knock knock")
        s.settimeout(0.5)
        with pytest.raises(socket.timeout):
            s.recv(100)
        assert echo.connections == before

        tcp_proxy.resume()
        s.settimeout(5)
        assert recv_exactly(s, 11) == b"knock knock"
    finally:
        s.close()


def test_pause_keeps_connections_open(tcp_proxy: TcpProxy) -> None:
    with connect(tcp_proxy) as s:
        s.sendall(b"x")
        assert recv_exactly(s, 1) == b"x"
        tcp_proxy.pause()
        time.sleep(0.3)
        assert not is_closed(s, timeout=0.3)
        assert tcp_proxy.connection_count == 1
        tcp_proxy.resume()
        s.settimeout(5)
        s.sendall(b"y")
        assert recv_exactly(s, 1) == b"y"


def test_kill_connections_closes_clients(tcp_proxy: TcpProxy) -> None:
    a = connect(tcp_proxy)
    b = connect(tcp_proxy)
    try:
        for s in (a, b):
            s.sendall(b"ping")
            assert recv_exactly(s, 4) == b"ping"
        tcp_proxy.kill_connections()
        assert tcp_proxy.connection_count == 0
        assert is_closed(a)
        assert is_closed(b)
    finally:
        a.close()
        b.close()
    # The proxy keeps serving new connections.
    with connect(tcp_proxy) as c:
        c.sendall(b"again")
        assert recv_exactly(c, 5) == b"again"


def test_kill_connections_resets(tcp_proxy: TcpProxy) -> None:
    with connect(tcp_proxy) as s:
        s.sendall(b"ping")
        assert recv_exactly(s, 4) == b"ping"
        tcp_proxy.kill_connections()
        s.settimeout(5)
        with pytest.raises(ConnectionResetError):
            s.recv(1)


def test_kill_connections_while_paused(tcp_proxy: TcpProxy) -> None:
    with connect(tcp_proxy) as s:
        s.sendall(b"ping")
        assert recv_exactly(s, 4) == b"ping"
        tcp_proxy.pause()
        tcp_proxy.kill_connections()
        assert is_closed(s)
    tcp_proxy.resume()
    with connect(tcp_proxy) as c:
        c.sendall(b"ok")
        assert recv_exactly(c, 2) == b"ok"


def test_delay_adds_latency(tcp_proxy: TcpProxy) -> None:
    with connect(tcp_proxy) as s:
        t0 = time.monotonic()
        s.sendall(b"fast")
        assert recv_exactly(s, 4) == b"fast"
        fast = time.monotonic() - t0

        tcp_proxy.set_delay(0.25)
        assert tcp_proxy.delay == 0.25
        t0 = time.monotonic()
        s.sendall(b"slow")
        assert recv_exactly(s, 4) == b"slow"
        slow = time.monotonic() - t0
        # Delayed once on the way in and once on the way back.
        assert slow >= 0.45
        assert slow < 5

        tcp_proxy.set_delay(0)
        t0 = time.monotonic()
        s.sendall(b"fast")
        assert recv_exactly(s, 4) == b"fast"
        assert time.monotonic() - t0 < 0.2 + fast


def test_delay_keeps_order(tcp_proxy: TcpProxy) -> None:
    tcp_proxy.set_delay(0.05)
    with connect(tcp_proxy) as s:
        expected = b"".join(f"<{i}>".encode() for i in range(200))
        for i in range(200):
            s.sendall(f"<{i}>".encode())
        assert recv_exactly(s, len(expected)) == expected


def test_negative_delay_rejected(tcp_proxy: TcpProxy) -> None:
    with pytest.raises(ValueError):
        tcp_proxy.set_delay(-1)


def test_unreachable_target_closes_client() -> None:
    dead_port = socket.socket()
    dead_port.bind(("127.0.0.1", 0))
    port = dead_port.getsockname()[1]
    dead_port.close()  # nothing listens there now
    with TcpProxy("127.0.0.1", port) as p:
        for _ in range(3):
            try:
                s = connect(p)
            except ConnectionError:
                continue  # reset so fast that connect() itself saw it: also "closed"
            with s:
                assert is_closed(s)
        assert p.errors == []


def test_stop_is_idempotent_and_closes_everything(echo: EchoServer) -> None:
    p = TcpProxy("127.0.0.1", echo.port).start()
    s = connect(p)
    try:
        s.sendall(b"hi")
        assert recv_exactly(s, 2) == b"hi"
        p.stop()
        p.stop()
        assert is_closed(s)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", p.port), timeout=2).close()
        with pytest.raises(RuntimeError):
            p.pause()
    finally:
        s.close()
    assert p.errors == []


def test_stop_while_paused(echo: EchoServer) -> None:
    p = TcpProxy("127.0.0.1", echo.port).start()
    s = connect(p)
    try:
        p.pause()
        s.sendall(b"stuck")
        p.stop()
        assert is_closed(s)
    finally:
        s.close()


def test_no_thread_left_behind(echo: EchoServer) -> None:
    before = {t.ident for t in threading.enumerate()}
    with TcpProxy("127.0.0.1", echo.port) as p:
        with connect(p) as s:
            s.sendall(b"z")
            assert recv_exactly(s, 1) == b"z"
    leftover = [
        t for t in threading.enumerate() if t.ident not in before and t.name.startswith("tcp-proxy")
    ]
    assert leftover == []
