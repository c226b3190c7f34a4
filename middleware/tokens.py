"""Bearer tokens of the Docker token-authentication flow: scopes, issuing signed JWTs, verifying them.

Dockyard's own tokens are ES256 (or RS256) JWTs signed with a key from the config or, by default, one generated
into `<data>/auth/token-key.pem` on first start. Generation is atomic (`link(2)` of a complete temp file), so
workers starting at once agree on one key. Tokens carry the distribution claims: `iss`, `sub`, `aud` (the
service), `exp`, `nbf`, `iat`, `jti` and `access`: `[{"type", "name", "actions"}]`.

Tokens of an external issuer are accepted when it is configured (issuer, audience, and a PEM public key or a JWKS
file), so Dockyard can sit behind an existing token server.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ASYMMETRIC = ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA"]
LEEWAY = 30  # seconds of clock skew tolerated between issuer and registry


@dataclass(frozen=True, slots=True)
class Scope:
    type: str
    name: str
    actions: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"


def parse_scopes(values: list[str]) -> list[Scope]:
    """`repository:library/app:pull,push` entries; several may share one value, space-separated. Malformed
    entries are ignored, as the reference token servers do."""
    scopes = []
    for value in values:
        for text in value.split():
            kind, sep, rest = text.partition(":")
            name, sep2, actions = rest.rpartition(":")
            if not (sep and sep2 and kind and name):
                continue
            kind = kind.split("(", 1)[0]  # repository(plugin) -> repository
            scopes.append(Scope(kind, name, tuple(a for a in actions.split(",") if a)))
    return scopes


def new_key_pem(algorithm: str) -> bytes:
    """A new private key for `algorithm`, PEM (PKCS#8)."""
    key = rsa.generate_private_key(65537, 2048) if algorithm.startswith(("RS", "PS")) else \
        ec.generate_private_key({"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1(),
                                 "ES512": ec.SECP521R1()}[algorithm])
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def shared_key(secret: Callable[[str, Callable[[], str]], str], algorithm: str):
    """The private key every node uses, kept by the database all nodes share (`secret(name, create)` stores
    `create()` under `name` unless a node did first, and returns what is stored)."""
    pem = secret(f"token-key-{algorithm}", lambda: new_key_pem(algorithm).decode())
    return serialization.load_pem_private_key(pem.encode(), password=None)


def load_or_create_key(path: Path, algorithm: str):
    """The private key at `path`; created if missing, atomically, so concurrent starters agree on one key."""
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        pass
    pem = new_key_pem(algorithm)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=".token-key.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # fails if another process won the race: then use its key
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


@dataclass
class TrustedIssuer:
    issuer: str
    audience: str
    public_key: object = None
    jwks: jwt.PyJWKSet | None = None
    algorithms: list = field(default_factory=lambda: list(ASYMMETRIC))

    def key_for(self, token: str):
        if self.jwks is None:
            return self.public_key
        kid = jwt.get_unverified_header(token).get("kid")
        for key in self.jwks.keys:
            if kid is None or key.key_id == kid:
                return key.key
        raise jwt.InvalidTokenError("no key in the JWKS file matches the token's kid")

    @classmethod
    def load(cls, issuer: str, audience: str, public_key: str = "", jwks: str = "") -> "TrustedIssuer":
        if jwks:
            return cls(issuer, audience, jwks=jwt.PyJWKSet.from_json(Path(jwks).read_text()))
        return cls(issuer, audience, public_key=serialization.load_pem_public_key(Path(public_key).read_bytes()))


class TokenIssuer:
    """Issues Dockyard's own tokens. `private_key` may be a callable that loads it, called at the first token: in
    htpasswd mode the endpoint serves the web UI, and a key is written to the data directory only once it is used.

    Refresh tokens (`issue_refresh`, Docker's `access_type=offline`) let a client that signed in once get access
    tokens for other scopes without keeping the password: their audience is `<service>#refresh`, so one is never
    accepted as an access token, nor an access token as one. They carry a fingerprint of the user's password hash,
    so changing the password or removing the user ends them."""

    def __init__(self, private_key, *, algorithm: str, issuer: str, service: str, expires_in: int,
                 clock: Callable[[], float] = time.time, refresh_expires_in: int = 8 * 3600):
        self._key = private_key
        self._public = None
        self.algorithm = algorithm
        self.issuer = issuer
        self.service = service
        self.expires_in = expires_in
        self.refresh_expires_in = refresh_expires_in
        self._clock = clock

    @property
    def private_key(self):
        if callable(self._key):
            self._key = self._key()
        return self._key

    @property
    def public_key(self):
        if self._public is None:  # once: every bearer request verifies against it
            self._public = self.private_key.public_key()
        return self._public

    @property
    def refresh_audience(self) -> str:
        return self.service + "#refresh"

    def issue_refresh(self, subject: str, fingerprint: str) -> str:
        now = int(self._clock())
        claims = {"iss": self.issuer, "sub": subject, "aud": self.refresh_audience,
                  "exp": now + self.refresh_expires_in, "iat": now, "jti": secrets.token_hex(16), "pwd": fingerprint}
        return jwt.encode(claims, self.private_key, algorithm=self.algorithm)

    def verify_refresh(self, token: str) -> dict:
        """The claims of a refresh token this issuer signed and that has not expired; else jwt.InvalidTokenError."""
        try:
            claims = jwt.decode(token, self.public_key, algorithms=[self.algorithm], audience=self.refresh_audience,
                                issuer=self.issuer,
                                options={"require": ["exp", "sub", "pwd"], "verify_exp": False, "verify_iat": False})
        except jwt.InvalidTokenError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise jwt.InvalidTokenError(f"malformed token: {type(exc).__name__}") from None
        if not _is_number(claims["exp"]) or self._clock() > claims["exp"]:
            raise jwt.ExpiredSignatureError("the refresh token has expired")
        if not isinstance(claims["sub"], str) or not claims["sub"] or not isinstance(claims["pwd"], str):
            raise jwt.InvalidTokenError("sub and pwd must be strings")
        return claims

    def issue(self, subject: str | None, access: list[dict]) -> dict:
        now = int(self._clock())
        claims = {"iss": self.issuer, "sub": subject or "", "aud": self.service, "exp": now + self.expires_in,
                  "nbf": now - 1, "iat": now, "jti": secrets.token_hex(16), "access": access}
        token = jwt.encode(claims, self.private_key, algorithm=self.algorithm)
        issued = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        return {"token": token, "access_token": token, "expires_in": self.expires_in, "issued_at": issued}


class TokenVerifier:
    """Checks a bearer token against Dockyard's own key and the trusted issuers; returns its claims and whether
    Dockyard issued it. Any failure, a claim of an unexpected type included, is `jwt.InvalidTokenError`. Times are
    judged by the injected clock (with LEEWAY seconds of skew), the same clock the issuer stamps tokens with."""

    def __init__(self, own: TokenIssuer | None, trusted: list[TrustedIssuer], *,
                 clock: Callable[[], float] = time.time):
        self.own = own
        self.trusted = {t.issuer: t for t in trusted}
        self._clock = clock

    def verify(self, token: str) -> tuple[dict, bool]:
        try:
            return self._verify(token)
        except jwt.InvalidTokenError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError) as exc:  # claims of unexpected types
            raise jwt.InvalidTokenError(f"malformed token: {type(exc).__name__}") from None

    def _verify(self, token: str) -> tuple[dict, bool]:
        unverified = jwt.decode(token, options={"verify_signature": False})
        issuer = unverified.get("iss")
        if not isinstance(issuer, str):
            raise jwt.InvalidIssuerError("the token's issuer is not a string")
        # exp and nbf are checked below against our clock, not the wall clock PyJWT would read.
        options = {"require": ["exp", "iss", "aud"], "verify_exp": False, "verify_nbf": False}
        if self.own is not None and issuer == self.own.issuer:
            claims = jwt.decode(token, self.own.public_key, algorithms=[self.own.algorithm],
                                audience=self.own.service, issuer=self.own.issuer, options=options)
            own = True
        else:
            trusted = self.trusted.get(issuer)
            if trusted is None:
                raise jwt.InvalidIssuerError("token from an issuer this registry does not trust")
            claims = jwt.decode(token, trusted.key_for(token), algorithms=trusted.algorithms,
                                audience=trusted.audience, issuer=trusted.issuer, options=options)
            own = False
        now = self._clock()
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if not _is_number(exp) or (nbf is not None and not _is_number(nbf)):
            raise jwt.InvalidTokenError("exp and nbf must be numbers")
        if now > exp + LEEWAY:
            raise jwt.ExpiredSignatureError("the token has expired")
        if nbf is not None and now < nbf - LEEWAY:
            raise jwt.ImmatureSignatureError("the token is not valid yet")
        if claims.get("sub") is not None and not isinstance(claims["sub"], str):
            raise jwt.InvalidTokenError("sub must be a string")
        return claims, own


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def granted_actions(claims: dict) -> dict[tuple[str, str], set[str]]:
    """(type, name) -> actions, from a token's `access` claim."""
    grants: dict[tuple[str, str], set[str]] = {}
    access = claims.get("access")
    for entry in access if isinstance(access, list) else []:  # a claim of another shape grants nothing
        if isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("type"), str):
            actions = entry.get("actions")
            grants.setdefault((entry["type"], entry["name"]), set()).update(
                a for a in (actions if isinstance(actions, list) else []) if isinstance(a, str))
    return grants
