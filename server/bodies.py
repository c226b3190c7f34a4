"""Request bodies as byte sources for the blob store, read straight into the store's buffers.

`StreamSource` reads any WSGI input. `GunicornSource` is the fast path under gunicorn: for a body of known length it
takes what gunicorn's parser has already buffered and then `recv_into`s the rest straight from the client socket
into the store's buffers, skipping the several copies gunicorn's own body reader makes per block (measured: that
reader alone capped a 1 GiB push at ~340 MB/s here). It is used only when the input is exactly the gunicorn object
it knows, and it marks the body consumed so keep-alive goes on as usual; anything else takes `StreamSource`.
"""

from __future__ import annotations

from typing import BinaryIO, Protocol

from .errors import SizeInvalid


class Source(Protocol):
    def readinto(self, buf: memoryview) -> int:
        """Fill `buf` as far as the body allows; 0 at the end of the body. SIZE_INVALID if it ends early."""


def _short(length: int, received: int) -> SizeInvalid:
    return SizeInvalid({"expected": length, "received": received}, message="request body shorter than Content-Length")


class StreamSource:
    """`length` bytes of a file-like stream, or up to EOF when `length` is None (chunked transfer encoding)."""

    def __init__(self, stream: BinaryIO, length: int | None):
        self._stream = stream
        self._length = length
        self._remaining = length

    def readinto(self, buf: memoryview) -> int:
        want = len(buf) if self._remaining is None else min(len(buf), self._remaining)
        filled = 0
        while filled < want:
            data = self._stream.read(want - filled)
            if not data:
                break
            buf[filled:filled + len(data)] = data
            filled += len(data)
        if self._remaining is not None:
            self._remaining -= filled
            if filled < want:
                raise _short(self._length, self._length - self._remaining)
        return filled


class GunicornSource:
    """A Content-Length body read from gunicorn's socket directly (see the module docstring)."""

    def __init__(self, body, length: int):
        self._body = body  # gunicorn.http.body.Body, whose reader is a LengthReader
        self._sock = None
        self._length = length
        self._remaining = length
        self._pending = memoryview(b"")

    def _take_over(self) -> None:
        """Done at the first read, not before: a request refused unread leaves gunicorn to drain its body."""
        reader = self._body.reader
        buffered = reader.unreader.buf.getvalue()
        self._pending = memoryview(buffered[:self._length])
        # Bytes past this body (a pipelined next request) stay with gunicorn.
        reader.unreader.buf = type(reader.unreader.buf)()
        reader.unreader.buf.write(buffered[self._length:])
        reader.length = 0  # gunicorn now sees the body as consumed
        # ... so until its last byte is read, the connection must not serve another request: a store failing
        # mid-body would otherwise leave the rest of the body to be parsed as the next request.
        self._body.failed = self._remaining > 0
        self._sock = reader.unreader.sock

    @classmethod
    def wrap(cls, environ: dict, length: int | None) -> "GunicornSource | None":
        body = environ.get("wsgi.input")
        if length is None or "gunicorn.socket" not in environ or type(body).__name__ != "Body":
            return None
        reader = getattr(body, "reader", None)
        unreader = getattr(reader, "unreader", None)
        if (type(reader).__name__ != "LengthReader" or getattr(reader, "length", None) != length
                or not hasattr(unreader, "sock") or not hasattr(unreader, "buf") or body.buf.tell()):
            return None
        return cls(body, length)

    def readinto(self, buf: memoryview) -> int:
        if self._sock is None:
            self._take_over()
        want = min(len(buf), self._remaining)
        filled = 0
        if self._pending:
            take = min(want, len(self._pending))
            buf[:take] = self._pending[:take]
            self._pending = self._pending[take:]
            filled = take
        try:
            while filled < want:
                n = self._sock.recv_into(buf[filled:want])
                if not n:
                    raise _short(self._length, self._length - self._remaining + filled)
                filled += n
        except BaseException:
            self._body.failed = True  # the connection's position is unknown: gunicorn must not reuse it
            raise
        self._remaining -= filled
        if not self._remaining:
            self._body.failed = False  # read to its end: the connection may go on
        return filled


def body_source(environ: dict, stream: BinaryIO, length: int | None) -> Source:
    return GunicornSource.wrap(environ, length) or StreamSource(stream, length)
