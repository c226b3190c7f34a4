"""Request bodies as byte sources for the blob store, read straight into the store's buffers.

`StreamSource` reads any WSGI input. `GunicornSource` is the fast path under gunicorn: for a body of known length it
takes what gunicorn's parser has already buffered and then `recv_into`s the rest straight from the client socket
into the store's buffers, skipping the several copies gunicorn's own body reader makes per block (measured: that
reader alone capped a 1 GiB push at ~340 MB/s here). It is used only when the input is exactly the gunicorn object
it knows, and after every read it tells gunicorn exactly where the body stands (what is left of it, and the bytes
buffered after it), so that a body abandoned half-way (a full disk, a refusal) is drained or its connection closed
by the server, never parsed as the next request; anything else takes `StreamSource`.
"""

from __future__ import annotations

from typing import BinaryIO, Protocol

from .errors import BadRequest, SizeInvalid


class Source(Protocol):
    def readinto(self, buf: memoryview) -> int:
        """Fill `buf` as far as the body allows; 0 at the end of the body. SIZE_INVALID if it ends early."""


def _read(stream: BinaryIO, size: int) -> bytes:
    """One read of a request body. A body the server cannot parse (a malformed chunked encoding) is BAD_REQUEST; a
    body that ends because the client went away is SIZE_INVALID (nobody reads the answer, but it is no 500)."""
    try:
        return stream.read(size)
    except OSError as exc:  # gunicorn's NoMoreData is an IOError; a reset connection an OSError
        raise SizeInvalid({"reason": f"the request body ended early: {type(exc).__name__}"},
                          message="request body ended early") from None
    except Exception as exc:
        if type(exc).__module__.startswith("gunicorn.http"):  # InvalidChunkSize, ChunkMissingTerminator, ...
            raise BadRequest({"reason": f"malformed request body: {type(exc).__name__}"},
                             message="malformed request body") from None
        raise


def read_small(stream: BinaryIO, limit: int) -> bytes:
    """A small body (a manifest, a form, an admin request) read whole, but never more than `limit` + 1 bytes: the
    caller refuses a body longer than `limit` (TOO_LARGE) without having read the rest."""
    parts, total = [], 0
    while total <= limit:
        data = _read(stream, limit + 1 - total)
        if not data:
            break
        parts.append(data)
        total += len(data)
    return b"".join(parts)


def _short(length: int, received: int) -> SizeInvalid:
    return SizeInvalid({"expected": length, "received": received}, message="request body shorter than Content-Length")


STREAM_STEP = 64 * 1024  # bytes asked of a stream per read: what the server's reader buffers for us at most


class StreamSource:
    """`length` bytes of a file-like stream, or up to EOF when `length` is None (chunked transfer encoding).

    The buffer is filled a STREAM_STEP at a time: gunicorn's body reader collects a whole read in buffers of its own
    before returning it (several copies of it, for a chunked body), so asking for a megabyte from a client sending
    at 1 MiB/s held megabytes per upload for a second each: 50 slow docker pushes took a worker from 30 to 126 MiB.
    """

    def __init__(self, stream: BinaryIO, length: int | None):
        self._stream = stream
        self._length = length
        self._remaining = length

    def readinto(self, buf: memoryview) -> int:
        want = len(buf) if self._remaining is None else min(len(buf), self._remaining)
        filled = 0
        while filled < want:
            data = _read(self._stream, min(want - filled, STREAM_STEP))
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
        self._after = b""  # bytes gunicorn had buffered past this body (a pipelined next request)

    def _take_over(self) -> None:
        """Done at the first read, not before: a request refused unread leaves gunicorn to drain its body."""
        reader = self._body.reader
        buffered = reader.unreader.buf.getvalue()
        self._pending = memoryview(buffered[:self._length])
        self._after = buffered[self._length:]
        self._sock = reader.unreader.sock

    def _sync(self) -> None:
        """Leave gunicorn's reader as if it had read what we did: the unread part of the body is still to come
        (what we hold of it back in its buffer, the rest on the socket), and the bytes after the body follow."""
        reader = self._body.reader
        buf = type(reader.unreader.buf)()
        buf.write(bytes(self._pending))
        buf.write(self._after)
        reader.unreader.buf = buf
        reader.length = self._remaining

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
        except OSError as exc:
            self._body.failed = True  # the connection's position is unknown: gunicorn must not reuse it
            raise SizeInvalid({"reason": f"the request body ended early: {type(exc).__name__}"},
                              message="request body ended early") from None
        except BaseException:
            self._body.failed = True
            raise
        finally:
            self._remaining -= filled
            self._sync()
        return filled


def body_source(environ: dict, stream: BinaryIO, length: int | None) -> Source:
    return GunicornSource.wrap(environ, length) or StreamSource(stream, length)
