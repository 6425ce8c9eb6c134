"""A small TCP proxy for fault injection in front of the Firestore emulator.

gRPC speaks HTTP/2 over TCP, so the proxy forwards bytes transparently in both
directions for any number of concurrent connections.  Faults:

* ``pause()``   -- blackhole: nothing is forwarded any more in either direction and no
  new connection is accepted, but every socket stays open, so clients hang as on a
  dead network (their writes go into socket buffers, their reads time out).
* ``resume()``  -- forward again, including everything buffered during the pause
  (connections that queued up in the listen backlog are accepted then).
* ``kill_connections()`` -- close every current connection abruptly (RST: SO_LINGER 0).
* ``set_delay(s)`` -- every forwarded chunk is held ``s`` seconds before it is sent on.

Design: one thread runs a ``selectors`` event loop over non-blocking sockets; other
threads talk to it through a command queue and a wake-up socket pair, and the control
calls return only after the loop has applied them.  Memory is bounded: each direction
of a connection buffers at most ``max_buffer`` bytes before the proxy stops reading
from its source (back-pressure), and at most ``max_connections`` connections are
served at once.
"""

from __future__ import annotations

import collections
import errno
import selectors
import socket
import struct
import threading
import time
from types import TracebackType
from typing import Callable

_CHUNK = 64 * 1024


class _Pipe:
    """One direction of a connection: bytes read from ``src`` waiting to go to ``dst``."""

    __slots__ = ("chunks", "size", "eof", "shut")

    def __init__(self) -> None:
        self.chunks: collections.deque[tuple[float, bytes]] = collections.deque()
        self.size = 0
        self.eof = False  # src has sent FIN
        self.shut = False  # FIN passed on to dst

    def done(self) -> bool:
        return self.eof and not self.chunks


class _Conn:
    __slots__ = ("client", "upstream", "connected", "c2u", "u2c", "masks", "closed")

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.connected = False
        self.c2u = _Pipe()
        self.u2c = _Pipe()
        self.masks: dict[socket.socket, int] = {client: 0, upstream: 0}
        self.closed = False


class TcpProxy:
    """Forward 127.0.0.1:<free port> to ``target_host:target_port``."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        max_connections: int = 512,
        max_buffer: int = 4 * 1024 * 1024,
    ) -> None:
        self.target_host = target_host
        self.target_port = int(target_port)
        self._listen_host = listen_host
        self._max_connections = max_connections
        self._max_buffer = max_buffer
        self._port: int | None = None
        self._listener: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._commands: collections.deque[tuple[Callable[[], None], threading.Event]] = (
            collections.deque()
        )
        self._cmd_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._conns: set[_Conn] = set()
        self._by_sock: dict[socket.socket, _Conn] = {}
        self._listening = False
        self._paused = False
        self._delay = 0.0
        self._stopping = False
        self._stopped = False
        self._target_addr: tuple[int, tuple[object, ...]] | None = None
        #: Unexpected errors caught in the loop thread (for debugging; never printed).
        self.errors: list[BaseException] = []
        #: Connections accepted so far.
        self.accepted = 0

    # -- public API -------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("proxy not started")
        return self._port

    @property
    def host(self) -> str:
        return self._listen_host

    @property
    def address(self) -> str:
        return f"{self._listen_host}:{self.port}"

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def delay(self) -> float:
        return self._delay

    @property
    def connection_count(self) -> int:
        return len(self._conns)

    def start(self) -> "TcpProxy":
        with self._state_lock:
            if self._thread is not None:
                raise RuntimeError("proxy already started")
            infos = socket.getaddrinfo(
                self.target_host, self.target_port, type=socket.SOCK_STREAM
            )
            family, _, _, _, sockaddr = infos[0]
            self._target_addr = (family, tuple(sockaddr))
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind((self._listen_host, 0))
                listener.listen(128)
                listener.setblocking(False)
            except BaseException:
                listener.close()
                raise
            self._listener = listener
            self._port = int(listener.getsockname()[1])
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            self._selector = selectors.DefaultSelector()
            self._selector.register(self._wake_r, selectors.EVENT_READ)
            self._set_listening(True)
            self._thread = threading.Thread(
                target=self._run, name=f"tcp-proxy-{self._port}", daemon=True
            )
            self._thread.start()
        return self

    def pause(self) -> None:
        """Stop forwarding (both directions) and accepting; keep every socket open."""
        self._call(self._do_pause)

    def resume(self) -> None:
        """Forward again, including the data held back during the pause."""
        self._call(self._do_resume)

    def kill_connections(self) -> None:
        """Abort every current connection (RST where possible)."""
        self._call(self._do_kill_all)

    def set_delay(self, seconds: float) -> None:
        """Hold every chunk forwarded from now on for ``seconds`` before sending it."""
        if seconds < 0:
            raise ValueError("delay must be >= 0")
        value = float(seconds)

        def apply() -> None:
            self._delay = value

        self._call(apply)

    def stop(self) -> None:
        """Close the listener and every connection and end the thread; idempotent."""
        with self._state_lock:
            thread = self._thread
            if thread is None or self._stopped:
                self._stopped = True
                return
            self._stopping = True
            self._wake()
            thread.join(timeout=10.0)
            self._stopped = True

    def __enter__(self) -> "TcpProxy":
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (
            f"TcpProxy({self._listen_host}:{self._port} -> {self.target_host}:"
            f"{self.target_port}, paused={self._paused}, delay={self._delay})"
        )

    # -- control plumbing -------------------------------------------------------------
    def _call(self, fn: Callable[[], None], timeout: float = 10.0) -> None:
        thread = self._thread
        if thread is None or self._stopping or not thread.is_alive():
            raise RuntimeError("proxy is not running")
        if threading.current_thread() is thread:
            fn()
            return
        done = threading.Event()
        with self._cmd_lock:
            self._commands.append((fn, done))
        self._wake()
        if not done.wait(timeout):
            raise RuntimeError("proxy loop did not respond")

    def _wake(self) -> None:
        w = self._wake_w
        if w is None:
            return
        try:
            w.send(b"x")
        except (BlockingIOError, OSError):
            pass  # already awake (buffer full) or shutting down

    def _drain_wake(self) -> None:
        assert self._wake_r is not None
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _run_commands(self) -> None:
        while True:
            with self._cmd_lock:
                if not self._commands:
                    return
                fn, done = self._commands.popleft()
            try:
                fn()
            except Exception as exc:  # pragma: no cover - defensive
                self.errors.append(exc)
            finally:
                done.set()

    # -- commands (loop thread) -------------------------------------------------------
    def _do_pause(self) -> None:
        self._paused = True
        self._set_listening(False)
        for conn in list(self._conns):
            self._update(conn)

    def _do_resume(self) -> None:
        self._paused = False
        self._set_listening(True)
        now = time.monotonic()
        for conn in list(self._conns):
            self._pump(conn, now)

    def _do_kill_all(self) -> None:
        for conn in list(self._conns):
            self._close(conn, abort=True)

    # -- event loop -------------------------------------------------------------------
    def _run(self) -> None:
        sel = self._selector
        assert sel is not None
        try:
            while not self._stopping:
                events = sel.select(self._next_timeout())
                now = time.monotonic()
                for key, mask in events:
                    sock = key.fileobj
                    if sock is self._wake_r:
                        self._drain_wake()
                    elif sock is self._listener:
                        self._accept()
                    else:
                        conn = self._by_sock.get(sock)  # type: ignore[call-overload]
                        if conn is None or conn.closed:
                            continue
                        try:
                            self._on_event(conn, sock, mask, now)  # type: ignore[arg-type]
                        except OSError:
                            self._close(conn, abort=True)
                        except Exception as exc:  # pragma: no cover - defensive
                            self.errors.append(exc)
                            self._close(conn, abort=True)
                self._run_commands()
                if self._delay or any(c.c2u.chunks or c.u2c.chunks for c in self._conns):
                    now = time.monotonic()
                    for conn in list(self._conns):
                        if conn.c2u.chunks or conn.u2c.chunks:
                            self._update(conn, now)
        except Exception as exc:  # pragma: no cover - defensive
            self.errors.append(exc)
        finally:
            self._shutdown()

    def _next_timeout(self) -> float | None:
        if self._paused:
            return None
        # Only chunks not yet due need a timer; due ones wait for EVENT_WRITE (a timer
        # for those would spin while the receiver is not reading).
        now = time.monotonic()
        soonest: float | None = None
        for conn in self._conns:
            for pipe in (conn.c2u, conn.u2c):
                if pipe.chunks:
                    due = pipe.chunks[0][0]
                    if due > now and (soonest is None or due < soonest):
                        soonest = due
        if soonest is None:
            return None
        return max(0.0, soonest - now)

    def _set_listening(self, on: bool) -> None:
        if self._listener is None or self._selector is None or on == self._listening:
            return
        if on:
            self._selector.register(self._listener, selectors.EVENT_READ)
        else:
            self._selector.unregister(self._listener)
        self._listening = on

    def _accept(self) -> None:
        assert self._listener is not None and self._target_addr is not None
        for _ in range(64):
            if self._paused:
                return
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: try again later
                self.errors.append(exc)
                return
            if len(self._conns) >= self._max_connections:
                _abort(client)
                continue
            family, addr = self._target_addr
            try:
                upstream = socket.socket(family, socket.SOCK_STREAM)
            except OSError as exc:
                self.errors.append(exc)
                _abort(client)
                return
            conn = _Conn(client, upstream)
            try:
                for s in (client, upstream):
                    s.setblocking(False)
                    try:
                        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    except OSError:
                        pass
                rc = upstream.connect_ex(addr)
            except OSError:
                _abort(client)
                _abort(upstream)
                continue
            self.accepted += 1
            self._conns.add(conn)
            self._by_sock[client] = conn
            self._by_sock[upstream] = conn
            if rc == 0:
                conn.connected = True
            elif rc not in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
                self._close(conn, abort=True)
                continue
            self._update(conn)

    def _on_event(self, conn: _Conn, sock: socket.socket, mask: int, now: float) -> None:
        if sock is conn.upstream and not conn.connected:
            if mask & selectors.EVENT_WRITE:
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    self._close(conn, abort=True)  # target refused: reset the client
                    return
                conn.connected = True
            else:
                return
        if self._paused:
            self._update(conn)
            return
        if mask & selectors.EVENT_READ:
            pipe = conn.c2u if sock is conn.client else conn.u2c
            self._read(sock, pipe, now)
        self._pump(conn, now)

    def _read(self, sock: socket.socket, pipe: _Pipe, now: float) -> None:
        if pipe.eof:
            return
        try:
            data = sock.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            pipe.eof = True
            return
        pipe.chunks.append((now + self._delay, data))
        pipe.size += len(data)

    def _pump(self, conn: _Conn, now: float) -> None:
        """Send what is due, pass on FINs, close when both sides are done."""
        if conn.closed:
            return
        if not self._paused and conn.connected:
            try:
                self._write(conn.upstream, conn.c2u, now)
                self._write(conn.client, conn.u2c, now)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._close(conn, abort=True)
                return
            if conn.c2u.done() and conn.u2c.done():
                self._close(conn, abort=False)
                return
        self._update(conn, now)

    def _write(self, dst: socket.socket, pipe: _Pipe, now: float) -> None:
        while pipe.chunks:
            due, data = pipe.chunks[0]
            if due > now:
                return
            try:
                sent = dst.send(data)
            except (BlockingIOError, InterruptedError):
                return
            pipe.size -= sent
            if sent < len(data):
                pipe.chunks[0] = (due, data[sent:])
                return
            pipe.chunks.popleft()
        if pipe.eof and not pipe.shut:
            pipe.shut = True
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _update(self, conn: _Conn, now: float | None = None) -> None:
        """Register the socket events this connection currently needs."""
        if conn.closed:
            return
        if now is None:
            now = time.monotonic()
        # Late chunks became due: try to send them right away.
        if not self._paused and conn.connected:
            for dst, pipe in ((conn.upstream, conn.c2u), (conn.client, conn.u2c)):
                if pipe.chunks and pipe.chunks[0][0] <= now:
                    try:
                        self._write(dst, pipe, now)
                    except (BlockingIOError, InterruptedError):
                        pass
                    except OSError:
                        self._close(conn, abort=True)
                        return
            if conn.c2u.done() and conn.u2c.done():
                self._close(conn, abort=False)
                return
        want_client = 0
        want_upstream = 0
        if not conn.connected:
            want_upstream = selectors.EVENT_WRITE  # connect completion
        if not self._paused:
            if not conn.c2u.eof and conn.c2u.size < self._max_buffer:
                want_client |= selectors.EVENT_READ
            if conn.connected:
                if not conn.u2c.eof and conn.u2c.size < self._max_buffer:
                    want_upstream |= selectors.EVENT_READ
                if conn.c2u.chunks and conn.c2u.chunks[0][0] <= now:
                    want_upstream |= selectors.EVENT_WRITE
                if conn.u2c.chunks and conn.u2c.chunks[0][0] <= now:
                    want_client |= selectors.EVENT_WRITE
        self._set_mask(conn, conn.client, want_client)
        self._set_mask(conn, conn.upstream, want_upstream)

    def _set_mask(self, conn: _Conn, sock: socket.socket, mask: int) -> None:
        sel = self._selector
        assert sel is not None
        old = conn.masks[sock]
        if old == mask:
            return
        if old == 0:
            sel.register(sock, mask)
        elif mask == 0:
            sel.unregister(sock)
        else:
            sel.modify(sock, mask)
        conn.masks[sock] = mask

    def _close(self, conn: _Conn, abort: bool) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._conns.discard(conn)
        sel = self._selector
        for sock in (conn.client, conn.upstream):
            self._by_sock.pop(sock, None)
            if conn.masks.get(sock) and sel is not None:
                try:
                    sel.unregister(sock)
                except (KeyError, ValueError, OSError):
                    pass
            conn.masks[sock] = 0
            if abort:
                _abort(sock)
            else:
                try:
                    sock.close()
                except OSError:
                    pass
        conn.c2u.chunks.clear()
        conn.u2c.chunks.clear()

    def _shutdown(self) -> None:
        for conn in list(self._conns):
            self._close(conn, abort=True)
        if self._selector is not None:
            try:
                self._selector.close()
            except Exception:  # pragma: no cover - defensive
                pass
        for s in (self._listener, self._wake_r, self._wake_w):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        self._listener = None
        self._wake_w = None
        self._wake_r = None
        self._listening = False
        # Release anyone still waiting on a command.
        with self._cmd_lock:
            pending = list(self._commands)
            self._commands.clear()
        for _, done in pending:
            done.set()


def _abort(sock: socket.socket) -> None:
    """Close ``sock`` with an RST instead of a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
