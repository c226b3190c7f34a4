"""Dockyard's gunicorn worker: gthread, made to keep serving with hundreds of slow or stalled clients.

gunicorn's gthread worker keeps idle keep-alive connections in an event loop, but it hands a connection to a
thread as soon as its first bytes arrive, and the thread then blocks until the request's headers are complete;
bodies and responses are read and written with no timeout at all. A few dozen clients sending their headers (or
their bodies) a byte at a time, or not at all, then hold every thread, and pulls time out (issue 12, finding 3).
This worker changes four things and keeps everything else of gthread (and so its measured push and pull speed):

1. **Headers are read in the event loop**, without a thread: a connection gets one only once its request line and
   headers are complete. A client must complete them within `header_timeout` seconds of the connection becoming
   readable (or of its previous response, on a kept-alive connection), in at most HEADER_MAX bytes, or it is
   closed. Slow or stalled headers cost a file descriptor and a buffer, never a thread.
2. **Every read and write of a request has an idle timeout** (`body_timeout`): a body that stops arriving, or a
   client that stops reading its download, frees the thread after that many seconds without progress.
3. **An answer given before the body was read leaves no body bytes to be read as a request**: the app marks the
   response `Connection: close` when a request's body was not consumed (see `observability`), and the rest of
   the body is read and thrown away up to DRAIN_BYTES / DRAIN_SECONDS, so a client still sending can finish and
   read the answer (a 413, a 401, a full disk), before the connection closes.
4. **Requests with a body and requests without run in thread pools of their own** (`threads` each): a pull, a
   manifest or a tag list never waits behind uploads, stalled or not. A worker accepts new connections only while
   its pool for requests without a body has a free thread: the others (or the kernel's backlog) take them instead.

5. **Closing lingers in the event loop**: gthread closes a connection "gracefully" (half-close, then read what
   the client still sends for up to 2 s) in its main loop, which a client that sends nothing more turns into a 2 s
   stop of the whole worker per connection; here the lingering is one more event-loop state.

Limits: a stalled body still holds a thread for up to `body_timeout` seconds, so `threads` x workers bounds how
many stalled uploads the server absorbs before other uploads wait (reads never do); in front of
the deploy/ nginx site nginx absorbs slow headers itself (client_header_timeout) and, with request buffering off,
streams bodies through (client_body_timeout). TLS is nginx's: with gunicorn's own TLS (`certfile`) this worker
behaves as gthread for the handshake.
"""

from __future__ import annotations

import errno
import selectors
import socket
import time
from collections import deque
from concurrent import futures
from functools import partial

from gunicorn.workers.gthread import TConn, ThreadWorker

HEADER_MAX = 64 * 1024  # bytes of request line and headers (gunicorn's own limits apply too)
HOUSEKEEPING_EVERY = 1.0  # seconds between two heartbeats to the arbiter (and two looks at the parent pid)
DRAIN_BYTES = 16 * 1024 * 1024  # what is read and thrown away of a body the app did not read, at most
DRAIN_SECONDS = 5.0
LINGER_SECONDS, LINGER_BYTES = 2.0, 64 * 1024  # gunicorn's close_graceful's bounds, kept


class IdleTimeoutSocket(socket.socket):
    """A socket whose blocking mode is "blocking, with an idle timeout": each recv or send may wait at most
    `idle_timeout` seconds. gthread switches sockets between blocking (in a thread) and non-blocking (in the event
    loop) with setblocking(); this keeps that and adds the timeout to the blocking side."""

    idle_timeout: float | None = None

    def setblocking(self, flag: bool) -> None:
        if flag:
            self.settimeout(self.idle_timeout)
        else:
            super().setblocking(False)

    # A client that stops reading its response: the same as one that went away (gthread logs that quietly).
    def _stalled(self) -> ConnectionResetError:
        return ConnectionResetError(errno.ECONNRESET, f"the client read nothing for {self.idle_timeout:g} s")

    def send(self, *args, **kwargs):
        try:
            return super().send(*args, **kwargs)
        except TimeoutError:
            raise self._stalled() from None

    def sendall(self, *args, **kwargs):
        try:
            return super().sendall(*args, **kwargs)
        except TimeoutError:
            raise self._stalled() from None

    def sendfile(self, *args, **kwargs):
        try:
            return super().sendfile(*args, **kwargs)
        except TimeoutError:
            raise self._stalled() from None

    @classmethod
    def adopt(cls, sock: socket.socket, idle_timeout: float) -> "IdleTimeoutSocket":
        adopted = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        adopted.idle_timeout = idle_timeout
        return adopted


class DockyardWorker(ThreadWorker):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.header_conns: deque = deque()  # connections whose request headers are still arriving
        self.lingering: deque = deque()  # connections half-closed by us, read until the client closes too
        self.light_pool = None  # requests without a body; self.tpool (gthread's) takes those with one
        self.busy_light = 0
        self.header_timeout = 10.0
        self.body_timeout = 60.0
        self._heartbeat_at = self._parent_checked_at = float("-inf")

    def init_process(self):
        self.light_pool = futures.ThreadPoolExecutor(max_workers=self.cfg.threads)
        super().init_process()

    def run(self):
        try:
            super().run()
        finally:
            self.light_pool.shutdown(wait=False)

    def handle_quit(self, sig, frame):
        self.light_pool.shutdown(wait=False)
        super().handle_quit(sig, frame)

    # -- housekeeping: once a second, not once per event-loop turn ------------------------------------------

    def notify(self):
        """gthread's loop calls this (a utime(2) of the heartbeat file) on every turn, three times per request under
        load; the arbiter only needs it once per `timeout` (120 s)."""
        now = time.monotonic()
        if now - self._heartbeat_at >= HOUSEKEEPING_EVERY:
            self._heartbeat_at = now
            super().notify()

    def is_parent_alive(self):
        now = time.monotonic()
        if now - self._parent_checked_at < HOUSEKEEPING_EVERY:
            return True
        self._parent_checked_at = now
        return super().is_parent_alive()

    def load_wsgi(self):
        """The timeouts are the app's settings (`header_timeout`, `body_timeout`): the app carries its config."""
        super().load_wsgi()
        registry = getattr(self.wsgi, "registry", None)
        if registry is not None:
            self.header_timeout = float(registry.config.header_timeout)
            self.body_timeout = float(registry.config.body_timeout)

    # -- accepting: only with a free thread -------------------------------------------------------------------

    def set_accept_enabled(self, enabled):
        super().set_accept_enabled(enabled and self.busy_light < self.cfg.threads)

    def accept(self, listener):
        try:
            client_sock, client_addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        if not self.cfg.is_ssl:
            client_sock = IdleTimeoutSocket.adopt(client_sock, self.body_timeout)
        conn = TConn(self.cfg, client_sock, client_addr, listener.getsockname())
        conn.close = partial(self.close_conn, conn)
        if self.cfg.is_ssl:
            self.enqueue_req(conn)  # the handshake needs a thread: gthread's own way
        else:
            self.await_headers(conn)

    # -- request headers, read in the event loop ------------------------------------------------------------

    def await_headers(self, conn, registered: bool = False) -> None:
        """Wait in the loop for the request's headers; `registered`: the socket is already in the poller (as a
        kept-alive connection), and only its callback changes."""
        if not registered:
            conn.sock.setblocking(False)
        conn.header_bytes = bytearray()
        conn.timeout = time.monotonic() + self.header_timeout
        conn.awaiting_headers = True
        self.header_conns.append(conn)
        if registered:
            self.poller.modify(conn.sock, selectors.EVENT_READ, partial(self.on_header_bytes, conn))
        else:
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_header_bytes, conn))

    def on_header_bytes(self, conn, _sock) -> None:
        try:
            data = conn.sock.recv(HEADER_MAX)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away
            self._drop_header_conn(conn)
            return
        self._take_header_bytes(conn, data)

    def _take_header_bytes(self, conn, data: bytes) -> None:
        seen = len(conn.header_bytes)
        conn.header_bytes += data
        complete = conn.header_bytes.find(b"\r\n\r\n", max(0, seen - 3)) >= 0
        # Not HTTP at all (a TLS ClientHello, as docker sends first to a plain port): the parser says so at once,
        # so the client falls back without waiting for a timeout.
        not_http = not (65 <= conn.header_bytes[0] <= 90)
        if complete or not_http or len(conn.header_bytes) >= HEADER_MAX:
            # Too long: the parser answers it (gunicorn's limit_request_* errors) from what arrived.
            self.poller.unregister(conn.sock)
            if conn.awaiting_headers:
                conn.awaiting_headers = False
                self.header_conns.remove(conn)
            conn.has_body = _announces_body(conn.header_bytes)
            self.enqueue_req(conn)
        elif not conn.awaiting_headers:  # more to come: wait for it in the loop
            conn.awaiting_headers = True
            self.header_conns.append(conn)
            self.poller.modify(conn.sock, selectors.EVENT_READ, partial(self.on_header_bytes, conn))

    def _drop_header_conn(self, conn) -> None:
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        conn.awaiting_headers = False
        self.header_conns.remove(conn)
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self):
        super().murder_pending()
        now = time.monotonic()
        while self.header_conns and self.header_conns[0].timeout <= now:
            self._drop_header_conn(self.header_conns[0])
        while self.lingering and self.lingering[0].timeout <= now:
            self._end_linger(self.lingering[0])

    # -- closing, without stopping the loop -----------------------------------------------------------------

    def close_conn(self, conn, graceful: bool = False) -> None:
        """TConn.close for this worker's connections: a graceful close half-closes and lingers in the loop."""
        if not graceful or self.cfg.is_ssl:
            TConn.close(conn, graceful=graceful)
            return
        try:
            conn.sock.shutdown(socket.SHUT_WR)
            conn.sock.setblocking(False)
        except OSError:
            TConn.close(conn)
            return
        conn.timeout = time.monotonic() + LINGER_SECONDS
        conn.lingered = 0
        self.lingering.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_linger_readable, conn))

    def on_linger_readable(self, conn, _sock) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        conn.lingered += len(data)
        if not data or conn.lingered >= LINGER_BYTES:
            self._end_linger(conn)

    def _end_linger(self, conn) -> None:
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        self.lingering.remove(conn)
        TConn.close(conn)

    def on_client_socket_readable(self, conn, client):
        """A kept-alive connection's next request: its headers too are read in the loop, at once (the socket is
        readable: usually the whole request is there, and goes to a thread without another turn of the loop)."""
        self.keepalived_conns.remove(conn)
        if self.cfg.is_ssl or getattr(conn, "is_http2", False):
            self.poller.unregister(client)
            self.enqueue_req(conn)
            return
        try:
            data = conn.sock.recv(HEADER_MAX)
        except (BlockingIOError, InterruptedError):
            self.await_headers(conn, registered=True)
            return
        except OSError:
            data = b""
        if not data:  # the client closed its kept-alive connection
            self.poller.unregister(client)
            self.nr_conns -= 1
            conn.close()
            return
        conn.header_bytes = bytearray()
        conn.timeout = time.monotonic() + self.header_timeout
        conn.awaiting_headers = False
        self._take_header_bytes(conn, data)

    def on_pending_socket_readable(self, conn, client):
        self.poller.unregister(client)
        self.pending_conns.remove(conn)
        if self.cfg.is_ssl:
            conn.data_ready = True
            self.enqueue_req(conn)
        else:
            self.await_headers(conn)

    # -- in a thread --------------------------------------------------------------------------------------

    def enqueue_req(self, conn):
        light = getattr(conn, "has_body", True) is False
        conn.light = light
        if light:
            self.busy_light += 1
        fs = (self.light_pool if light else self.tpool).submit(self.handle, conn)
        fs.add_done_callback(lambda fut: self.method_queue.defer(self.finish_request, conn, fut))

    def finish_request(self, conn, fs):
        if getattr(conn, "light", False):
            self.busy_light -= 1
        conn.has_body = None  # the next request on this connection is judged by its own headers
        super().finish_request(conn, fs)

    def handle(self, conn):
        received = getattr(conn, "header_bytes", None)
        if received is not None:
            conn.header_bytes = None
            conn.data_ready = True  # the headers are here: no waiting for data before taking the thread
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader.unread(bytes(received))
        return super().handle(conn)

    def _keepalive_after(self, conn, keepalive):
        """Whether the connection may serve another request. What the app left unread of the body is read and
        thrown away first, up to DRAIN_BYTES within DRAIN_SECONDS (so a client still sending can finish and read
        the answer); a body that is longer, or stalls, closes the connection."""
        if not keepalive:
            return False
        body = getattr(conn.parser.mesg, "body", None)
        reader = getattr(body, "reader", None)
        if type(reader).__name__ == "LengthReader" and reader.length == 0 and not getattr(body, "failed", False):
            return True  # nothing left to drain (every GET): no timeout to set and reset on the socket
        return bool(conn.parser.finish_body(deadline=time.monotonic() + DRAIN_SECONDS, max_bytes=DRAIN_BYTES))


def _announces_body(head: bytes) -> bool:
    """Whether a request's headers announce a body: a non-zero Content-Length, or any Transfer-Encoding."""
    lowered = head.lower()
    if b"\r\ntransfer-encoding:" in lowered:
        return True
    at = lowered.find(b"\r\ncontent-length:")
    if at < 0:
        return False
    value = lowered[at + 17:lowered.find(b"\r\n", at + 17)].strip()
    return value not in (b"", b"0")
