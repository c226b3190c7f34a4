"""The grammar of repository names, tags, digests and references (OCI Distribution Spec and image-spec descriptor.md).

Everything that reaches storage as a path component is parsed here first: a digest becomes (algorithm, hex) from a
closed set of algorithms with a fixed length, so no user input ever forms a file path on its own.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from .errors import DigestInvalid, NameInvalid, TagInvalid

NAME_RE = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*")
NAME_MAX = 255
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
# image-spec: algorithm-component (separator algorithm-component)* ":" encoded
DIGEST_RE = re.compile(r"([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)")

# Registered algorithms and the length of their lowercase-hex encoding.
ALGORITHMS = {"sha256": 64, "sha512": 128}
HEX_RE = re.compile(r"[a-f0-9]+")


@dataclass(frozen=True, slots=True)
class Digest:
    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> "Digest":
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())


def parse_digest(value: str | None) -> Digest:
    """Parse a digest string; raise DIGEST_INVALID for bad syntax, unknown algorithms or wrong lengths."""
    if not value:
        raise DigestInvalid({"digest": value}, message="digest missing")
    match = DIGEST_RE.fullmatch(value)
    if not match:
        raise DigestInvalid({"digest": value}, message="invalid digest syntax")
    algorithm, encoded = match.groups()
    if algorithm not in ALGORITHMS:
        raise DigestInvalid({"digest": value, "algorithm": algorithm}, message="unsupported digest algorithm")
    if len(encoded) != ALGORITHMS[algorithm] or not HEX_RE.fullmatch(encoded):
        raise DigestInvalid({"digest": value}, message=f"invalid {algorithm} digest: expected "
                            f"{ALGORITHMS[algorithm]} lowercase hex characters")
    return Digest(algorithm, encoded)


def is_digest_reference(reference: str) -> bool:
    """A manifest reference is a digest when it has an algorithm separator; tags cannot contain ':'."""
    return ":" in reference


def valid_repository_name(name: str) -> bool:
    return len(name) <= NAME_MAX and NAME_RE.fullmatch(name) is not None


def validate_name(name: str) -> str:
    if len(name) > NAME_MAX or not NAME_RE.fullmatch(name):
        raise NameInvalid({"name": name[:300]}, message="invalid repository name")
    return name


def validate_tag(tag: str) -> str:
    if not TAG_RE.fullmatch(tag):
        raise TagInvalid({"tag": tag[:300]}, message="invalid tag")
    return tag


def parse_reference(reference: str) -> str | Digest:
    """A manifest reference: a Digest, or a tag string."""
    if is_digest_reference(reference):
        return parse_digest(reference)
    return validate_tag(reference)
