"""A running SHA-256 whose state can be saved as bytes and resumed in another process or on another host.

Python's hashlib objects cannot be serialised, so an upload session that continues on another worker would have to
hash its bytes again from the start (and on an object store, the parts of an unfinished multipart upload cannot
even be read back). OpenSSL's libcrypto, which hashlib itself uses, still exports the SHA256_Init / SHA256_Update /
SHA256_Final functions and their context, a plain 112-byte struct: saving it is copying those bytes. ctypes calls
release the GIL, so hashing still runs beside the thread that receives and writes a body.

A saved state is only ever produced and read by this module; it travels in the upload session's metadata row.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

CTX_SIZE = 112  # sizeof(SHA256_CTX): eight 32-bit words of state, 64-bit length, a 64-byte block, two ints


class HashUnavailable(RuntimeError):
    """libcrypto could not be loaded: the registry cannot save running hashes."""


@functools.cache
def _libcrypto():
    names = [ctypes.util.find_library("crypto"), "libcrypto.so.3", "libcrypto.so"]
    for name in filter(None, names):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            for symbol in ("SHA256_Init", "SHA256_Update", "SHA256_Final"):
                getattr(lib, symbol)
        except AttributeError:
            continue
        lib.SHA256_Init.argtypes = [ctypes.c_void_p]
        lib.SHA256_Update.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        lib.SHA256_Final.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        for function in (lib.SHA256_Init, lib.SHA256_Update, lib.SHA256_Final):
            function.restype = ctypes.c_int
        return lib
    raise HashUnavailable("OpenSSL's libcrypto (libcrypto.so.3) is needed to save running SHA-256 states")


class ResumableSha256:
    """`hashlib.sha256()`'s interface (update, digest, hexdigest, copy) plus `state()` / `from_state()`."""

    __slots__ = ("_ctx",)
    name = "sha256"

    def __init__(self, data: bytes | bytearray | memoryview = b""):
        self._ctx = ctypes.create_string_buffer(CTX_SIZE)
        if _libcrypto().SHA256_Init(self._ctx) != 1:
            raise HashUnavailable("SHA256_Init failed")
        if data:
            self.update(data)

    @classmethod
    def from_state(cls, state: bytes) -> "ResumableSha256":
        """Resume from `state()`; an empty state is a new hash."""
        if not state:
            return cls()
        if len(state) != CTX_SIZE:
            raise ValueError(f"a saved SHA-256 state is {CTX_SIZE} bytes, not {len(state)}")
        hasher = cls.__new__(cls)
        hasher._ctx = ctypes.create_string_buffer(bytes(state), CTX_SIZE)
        return hasher

    def state(self) -> bytes:
        return self._ctx.raw

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        if not view.contiguous:
            view = memoryview(view.tobytes())
        length = view.nbytes
        if not length:
            return
        if view.readonly:
            pointer = ctypes.c_char_p(view.tobytes() if not isinstance(data, bytes) else data)
        else:
            pointer = (ctypes.c_char * length).from_buffer(view.cast("B"))
        if _libcrypto().SHA256_Update(self._ctx, pointer, length) != 1:
            raise HashUnavailable("SHA256_Update failed")

    def copy(self) -> "ResumableSha256":
        return ResumableSha256.from_state(self.state())

    def digest(self) -> bytes:
        out = ctypes.create_string_buffer(32)
        ctx = ctypes.create_string_buffer(self._ctx.raw, CTX_SIZE)  # Final consumes the context: finish a copy
        if _libcrypto().SHA256_Final(out, ctx) != 1:
            raise HashUnavailable("SHA256_Final failed")
        return out.raw

    def hexdigest(self) -> str:
        return self.digest().hex()
