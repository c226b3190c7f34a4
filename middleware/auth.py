"""Who you are (htpasswd basic auth, bearer tokens) and what you may do (access rules): the `auth` middleware.

`process_request` authenticates: wrong credentials are a 401 at once; no credentials make the caller anonymous.
`process_resource` authorizes what the routed request needs (`access.required_access`): an anonymous caller who
may not is asked to authenticate (401 with a challenge naming the exact scope), an authenticated one gets 403
DENIED. On `_catalog` it hands the catalog a filter (`req.context.visible_repository`); on a cross-repository
mount whose source the caller may not pull, it drops `mount`/`from`, so the POST opens an ordinary upload session.

In token mode the challenge is `Bearer realm=...,service=...,scope=...` and `TokenResource` (at `/auth/token`)
issues short-lived JWTs granting only what the rules allow. In htpasswd mode the challenge stays `Basic`, but the
token endpoint is served too (unless `issue_tokens = false`) and its tokens are accepted: the web UI signs in there,
so a browser never holds Basic credentials. The identity travels on `req.context.user`.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import glob
import hmac
from dataclasses import dataclass
from pathlib import Path

import falcon
import jwt

from dockyard.server.errors import BadRequest, Denied, TooLarge, Unauthorized
from dockyard.server.bodies import read_small
from dockyard.server.parsing import FORM_MAX as MAX_FORM
from dockyard.server.parsing import form as parse_form
from dockyard.server.routes import is_admin_path
from dockyard.server.urls import absolute_url

from dockyard.server.proxies import TrustedProxies

from . import MiddlewareContext, Options, client_address
from .buckets import Limit
from .logins import DEFAULT_PER_ACCOUNT, DEFAULT_PER_ADDRESS, LoginGuard, LoginThrottle
from .access import ACTIONS, DELETE, PULL, PUSH, Access, required_access
from .htpasswd import Htpasswd
from .tokens import (TokenIssuer, TokenVerifier, TrustedIssuer, granted_actions, load_or_create_key, parse_scopes,
                     shared_key)


TOKEN_PATH = "/auth/token"
ANONYMOUS_BASIC = "Og=="  # base64(":"): no user, no password


@dataclass
class Rule:
    users: frozenset
    groups: frozenset
    repositories: tuple[str, ...]
    actions: frozenset


class AccessRules:
    """Per user and group, per repository glob (`*` spans `/`; `{user}` stands for the caller's name), the
    actions pull/push/delete. Anonymous callers may pull what `anonymous_pull` matches, and so may everyone
    else. Admins may do everything, including the admin API."""

    def __init__(self, rules: list[Rule], *, groups: dict[str, frozenset] | None = None,
                 admins: frozenset = frozenset(), admin_groups: frozenset = frozenset(),
                 anonymous_pull: tuple[str, ...] = ()):
        self.rules = rules
        self.groups = groups or {}
        self.admins = admins
        self.admin_groups = admin_groups
        self.anonymous_pull = anonymous_pull

    def groups_of(self, user: str) -> set[str]:
        return {group for group, members in self.groups.items() if user in members}

    def is_admin(self, user: str | None) -> bool:
        return user is not None and (user in self.admins or bool(self.groups_of(user) & self.admin_groups))

    def allowed(self, user: str | None, repository: str) -> set[str]:
        if self.is_admin(user):
            return set(ACTIONS)
        actions = set()
        if any(fnmatch.fnmatchcase(repository, p) for p in self.anonymous_pull):
            actions.add(PULL)
        if user is None:
            return actions
        groups = self.groups_of(user)
        for rule in self.rules:
            if "*" in rule.users or user in rule.users or groups & rule.groups:
                # The user's name stands for itself only: a user called "*" must not match every home.
                escaped = glob.escape(user)
                if any(fnmatch.fnmatchcase(repository, p.replace("{user}", escaped)) for p in rule.repositories):
                    actions |= rule.actions
        return actions

    def may_list_catalog(self, user: str | None) -> bool:
        return user is not None or bool(self.anonymous_pull)


@dataclass
class Identity:
    user: str | None = None
    # For bearer tokens: what the token grants (all it may do), and whether Dockyard issued it.
    grants: dict | None = None
    own_token: bool = True
    scheme: str = ""


def _basic_credentials(header: str) -> tuple[str, str] | None:
    try:
        decoded = base64.b64decode(header.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep and user else None


class AuthMiddleware:
    def __init__(self, rules: AccessRules, *, htpasswd: Htpasswd | None = None, realm: str = "Dockyard",
                 issuer: TokenIssuer | None = None, verifier: TokenVerifier | None = None,
                 token_realm: str = "", token_path: str = TOKEN_PATH, token_mode: bool | None = None,
                 guard: LoginGuard | None = None, proxies: TrustedProxies | None = None):
        self.rules = rules
        self.guard = guard
        self.proxies = proxies or TrustedProxies()
        self.htpasswd = htpasswd
        self.realm = realm
        self.issuer = issuer
        self.verifier = verifier
        # Bearer challenges; in htpasswd mode a verifier may still accept the token endpoint's tokens.
        self.token_mode = verifier is not None if token_mode is None else token_mode
        self.token_realm = token_realm
        self.token_path = token_path

    # -- construction from the config file -------------------------------------------------------------------

    @classmethod
    def from_config(cls, options: Options, context: MiddlewareContext) -> "AuthMiddleware":
        htpasswd_path = options.get("htpasswd", str, "")
        cache_seconds = options.number("cache_seconds", 60)
        groups = {}
        for group, members in options.get("groups", dict, {}).items():
            if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
                raise options.error(f"groups.{group}", "expected a list of user names")
            groups[group] = frozenset(members)
        rules = []
        for i, raw in enumerate(options.get("rules", list, [])):
            if not isinstance(raw, dict):
                raise options.error(f"rules[{i}]", "expected a table")
            sub = Options(options.entry, raw, prefix=f"rules[{i}].")
            rule = Rule(frozenset(sub.strings("users")), frozenset(sub.strings("groups")),
                        sub.strings("repositories", ()), frozenset(sub.strings("actions", ())))
            bad = rule.actions - set(ACTIONS) - {"*"}
            if bad:
                raise sub.error("actions", f"unknown action(s) {', '.join(sorted(bad))} (pull, push, delete, *)")
            if "*" in rule.actions:
                rule.actions = frozenset(ACTIONS)
            if not rule.repositories:
                raise sub.error("repositories", "is required")
            unknown_groups = rule.groups - set(groups)
            if unknown_groups:
                raise sub.error("groups", f"unknown group(s) {', '.join(sorted(unknown_groups))}")
            sub.finish()
            rules.append(rule)
        anonymous = options.get("anonymous_pull", (list, bool), [])
        if isinstance(anonymous, bool):
            anonymous = ["*"] if anonymous else []
        elif not all(isinstance(p, str) for p in anonymous):
            raise options.error("anonymous_pull", "expected true, false or a list of repository patterns")
        access_rules = AccessRules(rules, groups=groups, admins=frozenset(options.strings("admins")),
                             admin_groups=frozenset(options.strings("admin_groups")),
                             anonymous_pull=tuple(anonymous))
        htpasswd = None
        if htpasswd_path:
            path = Path(htpasswd_path)
            if not path.exists():
                raise options.error("htpasswd", f"file {htpasswd_path!r} not found "
                                    "(create it with: dockyard user add NAME --htpasswd FILE)")
            htpasswd = Htpasswd(path, cache_seconds=cache_seconds)
        realm = options.get("realm", str, "Dockyard")
        token = options.get("token", dict, None)
        issuer = verifier = None
        token_realm, token_path = "", TOKEN_PATH
        if token is not None:
            issuer, verifier, token_realm, token_path = cls._token_config(
                Options(options.entry, token, prefix="token."), context)
        elif htpasswd is None:
            raise options.error("htpasswd", "is required unless token authentication is configured")
        if options.get("issue_tokens", bool, True) and token is None:
            # htpasswd mode: the token endpoint for the web UI; the key is made when the first token is.
            issuer = TokenIssuer(lambda: cls._own_key(context, "", "ES256"), algorithm="ES256",
                                 issuer="dockyard", service="dockyard", expires_in=300, clock=context.now)
            verifier = TokenVerifier(issuer, [], clock=context.now)
        guard = LoginGuard(context.buckets(), **cls._failed_logins(options))
        return cls(access_rules, htpasswd=htpasswd, realm=realm, issuer=issuer, verifier=verifier,
                   token_realm=token_realm, token_path=token_path, token_mode=token is not None, guard=guard,
                   proxies=context.config.proxies)

    @staticmethod
    def _failed_logins(options: Options) -> dict:
        limits = {}
        raw = options.get("failed_logins", dict, {})
        sub = Options(options.entry, raw, prefix="failed_logins.")
        for name, default in (("per_account", DEFAULT_PER_ACCOUNT), ("per_address", DEFAULT_PER_ADDRESS)):
            table = sub.get(name, dict, {})
            limit = Options(options.entry, table, prefix=f"failed_logins.{name}.")
            limits[name] = Limit(limit.number("rate", default.rate),
                                 limit.number("burst", default.burst, minimum=1))
            limit.finish()
        sub.finish()
        return limits

    def parts(self) -> dict:
        """The stages of the request path this middleware acts at (see dockyard.server.pipeline)."""
        parts = {"auth": self}
        if self.guard is not None:
            parts["throttle"] = LoginThrottle(self.guard, lambda req: client_address(req, self.proxies),
                                              self.token_path)
        return parts

    @staticmethod
    def _own_key(context: MiddlewareContext, key_path: str, algorithm: str):
        """The key Dockyard signs its tokens with: the `key` file when one is given; else one made on first use and
        kept where every process that must verify the tokens finds it: the shared database when there is one
        (several nodes), the data directory otherwise."""
        if key_path:
            return load_or_create_key(Path(key_path), algorithm)
        if context.shared is not None:
            return shared_key(context.shared.secret, algorithm)
        return load_or_create_key(context.data_path / "auth" / "token-key.pem", algorithm)

    @staticmethod
    def _token_config(options: Options, context: MiddlewareContext):
        algorithm = options.get("algorithm", str, "ES256")
        if algorithm not in ("ES256", "ES384", "ES512", "RS256", "RS384", "RS512"):
            raise options.error("algorithm", f"must be ES256, ES384, ES512, RS256, RS384 or RS512, got {algorithm!r}")
        service = options.get("service", str, "dockyard")
        issuer_name = options.get("issuer", str, "dockyard")
        expires_in = int(options.number("expires_in", 300, minimum=10))
        refresh_expires_in = int(options.number("refresh_expires_in", 8 * 3600, minimum=60))
        key_path = options.get("key", str, "")
        realm = options.get("realm", str, "")
        path = options.get("path", str, TOKEN_PATH)
        if not path.startswith("/") or path.startswith("/v2/"):
            raise options.error("path", "must be an absolute path outside /v2/")
        issue = options.get("issue", bool, True)
        try:
            key = AuthMiddleware._own_key(context, key_path, algorithm) if issue else None
        except (OSError, ValueError, TypeError) as exc:
            raise options.error("key", f"cannot load the private key: {exc}") from None
        own = TokenIssuer(key, algorithm=algorithm, issuer=issuer_name, service=service, expires_in=expires_in,
                          clock=context.now, refresh_expires_in=refresh_expires_in) if key is not None else None
        trusted = []
        for i, raw in enumerate(options.get("trusted_issuers", list, [])):
            if not isinstance(raw, dict):
                raise options.error(f"trusted_issuers[{i}]", "expected a table")
            sub = Options(options.entry, raw, prefix=f"{options.prefix}trusted_issuers[{i}].")
            name, audience = sub.get("issuer", str), sub.get("audience", str, service)
            public_key, jwks = sub.get("public_key", str, ""), sub.get("jwks", str, "")
            sub.finish()
            if bool(public_key) == bool(jwks):
                raise sub.error("public_key", "give exactly one of public_key (PEM file) and jwks (JWKS file)")
            try:
                trusted.append(TrustedIssuer.load(name, audience, public_key, jwks))
            except (OSError, ValueError, jwt.PyJWKError) as exc:
                raise sub.error("jwks" if jwks else "public_key", f"cannot load: {exc}") from None
        options.finish()
        return own, TokenVerifier(own, trusted, clock=context.now), realm, path

    def routes(self):
        if self.issuer is not None:
            yield self.token_path, TokenResource(self)

    # -- authentication --------------------------------------------------------------------------------------

    def check_password(self, req: falcon.Request, user: str, password: str) -> bool:
        """The one door every password goes through: the failed-login policy first (429 before any bcrypt when
        this account was tried too often from this address), then the htpasswd file."""
        address = client_address(req, self.proxies)
        if self.guard is not None:
            self.guard.check(user, address)
        if self.htpasswd is not None and self.htpasswd.verify(user, password):
            return True
        if self.guard is not None:
            self.guard.failed(user, address)
        return False

    def check_credentials(self, req: falcon.Request, header_value: str) -> str | None:
        """The user of `Basic` credentials whose password is right; None otherwise (malformed ones included)."""
        credentials = _basic_credentials(header_value)
        if credentials is None:
            if self.guard is not None:
                self.guard.failed("", client_address(req, self.proxies))
            return None
        return credentials[0] if self.check_password(req, *credentials) else None

    def challenge(self, req: falcon.Request, access: Access | None, error: str = "") -> str:
        if not self.token_mode:
            return f'Basic realm="{self.realm}"'
        # The external URL (base_url, or forwarded headers from a trusted proxy): what the client can reach.
        realm = self.token_realm or absolute_url(req, self.token_path)
        service = self.issuer.service if self.issuer else next(iter(self.verifier.trusted.values())).audience
        value = f'Bearer realm="{realm}",service="{service}"'
        scope = access.scope if access else None
        if scope:
            value += f',scope="{scope}"'
        if error:
            value += f',error="{error}"'
        return value

    def unauthorized(self, req: falcon.Request, access: Access | None, reason: str, error: str = "") -> Unauthorized:
        detail = {"reason": reason}
        if access is not None and access.scope:
            detail["scope"] = access.scope
        return Unauthorized(detail, headers={"WWW-Authenticate": self.challenge(req, access, error)})

    def authenticate(self, req: falcon.Request) -> Identity:
        header = req.get_header("Authorization")
        if not header:
            return Identity()
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "basic":
            if value.strip() == ANONYMOUS_BASIC:
                return Identity()  # containers/image answers a Basic challenge with empty credentials
            user = self.check_credentials(req, value)
            if user is None:
                raise self.unauthorized(req, None, "invalid username or password")
            return Identity(user, scheme="basic")
        if scheme == "bearer" and self.verifier is not None:
            try:
                claims, own = self.verifier.verify(value.strip())
            except jwt.InvalidTokenError as exc:
                raise self.unauthorized(req, None, f"invalid token: {type(exc).__name__}",
                                        error="invalid_token") from None
            return Identity(claims.get("sub") or None, grants=granted_actions(claims), own_token=own,
                            scheme="bearer")
        raise self.unauthorized(req, None, f"unsupported authorization scheme {scheme[:20]!r}")

    # -- authorization ---------------------------------------------------------------------------------------

    def permits(self, identity: Identity, access: Access) -> bool:
        """Whether the identity may do what `access` asks (rules for basic/anonymous; token grants for bearer)."""
        if access.kind in ("public", "login"):
            return access.kind == "public" or identity.user is not None or identity.grants is not None
        if identity.grants is not None:
            granted = identity.grants.get(self._grant_key(access), set())
            if "*" in granted:
                return True
            return all(action in granted for action in access.actions) if access.kind == "repository" \
                else False
        if access.kind == "admin":
            return self.rules.is_admin(identity.user)
        if access.kind == "catalog":
            return self.rules.may_list_catalog(identity.user)
        return set(access.actions) <= self.rules.allowed(identity.user, access.name)

    @staticmethod
    def _grant_key(access: Access) -> tuple[str, str]:
        if access.kind == "repository":
            return ("repository", access.name)
        return ("registry", "catalog" if access.kind == "catalog" else "admin")

    def authorize(self, req: falcon.Request, identity: Identity, access: Access) -> None:
        if self.permits(identity, access):
            return
        if identity.user is None:  # no credentials, or an anonymous token: ask for credentials
            raise self.unauthorized(req, access, "authentication required")
        if identity.grants is not None and (not identity.own_token or self.permits(Identity(identity.user), access)):
            # A valid token without this scope, for an action the rules allow (or an external issuer's, where we
            # cannot know): the client should fetch a token for the scope in the challenge.
            raise self.unauthorized(req, access, "the token does not grant this scope", "insufficient_scope")
        raise Denied({"scope": access.scope} if access.scope else None,
                     headers={"WWW-Authenticate": self.challenge(req, access, "insufficient_scope")}
                     if self.token_mode else None)

    def may_pull(self, identity: Identity, repository: str) -> bool:
        return self.permits(identity, Access("repository", repository, (PULL,)))

    def catalog_filter(self, identity: Identity):
        if identity.grants is not None and not identity.own_token:
            return None  # an external issuer granted the catalog scope: the whole catalog
        user = identity.user
        if self.rules.is_admin(user):
            return None
        return lambda name: PULL in self.rules.allowed(user, name)

    # -- Falcon middleware -----------------------------------------------------------------------------------

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.path == self.token_path:
            return  # the token endpoint checks its own credentials
        identity = self.authenticate(req)
        req.context.identity = identity
        req.context.user = identity.user
        if is_admin_path(req.path):
            # Guarded here, before routing, so an admin path is never reachable without the role.
            access = required_access(req.method, req.path, None, {})
            self.authorize(req, identity, access)

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource, params: dict) -> None:
        identity = req.context.get("identity")
        if identity is None:
            return
        access = required_access(req.method, req.path, req.uri_template, params)
        self.authorize(req, identity, access)
        if access.kind == "catalog":
            req.context.visible_repository = self.catalog_filter(identity)
        elif req.method == "POST" and req.get_param("mount") and req.get_param("from"):
            if not self.may_pull(identity, req.get_param("from")):
                # No pull on the source: no mount, but the push goes on with an ordinary upload session.
                req.params.pop("mount", None)
                req.params.pop("from", None)


class TokenResource:
    """The token endpoint: `GET ?service=&scope=&account=` with optional basic credentials (docker, podman,
    skopeo) or `POST` form with `grant_type=password` (OAuth2 style). Answers `token`, `access_token`,
    `expires_in`, `issued_at`; grants each requested scope only the actions the rules allow. A password grant with
    `access_type=offline` also answers a `refresh_token`, which `grant_type=refresh_token` exchanges for tokens of
    other scopes (Docker's OAuth2 flow): the web UI keeps that in memory instead of the password."""

    rate_class = "token"  # the ratelimit middleware's class for these requests

    def __init__(self, auth: AuthMiddleware):
        self.auth = auth

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        header = req.get_header("Authorization")
        user = None
        if header and header.partition(" ")[2].strip() != ANONYMOUS_BASIC:
            scheme, _, value = header.partition(" ")
            user = self.auth.check_credentials(req, value) if scheme.lower() == "basic" else None
            if user is None:
                raise self._refused(req)
        self._answer(req, resp, user, req.get_param("service"), req.get_param_as_list("scope") or [])

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        length = req.content_length or 0
        if length > MAX_FORM:
            raise TooLarge({"reason": "form too large", "limit": MAX_FORM})
        form = parse_form(read_small(req.bounded_stream, MAX_FORM))
        grant_type = (form.get("grant_type") or [""])[0]
        if grant_type == "refresh_token":
            self._refresh(req, resp, form)
            return
        if grant_type != "password":
            raise BadRequest({"grant_type": grant_type[:40], "reason": "grant_type must be password or "
                              "refresh_token"}, message="unsupported grant type")
        user, password = (form.get("username") or [""])[0], (form.get("password") or [""])[0]
        if not user or not self.auth.check_password(req, user, password):
            raise self._refused(req)
        self._answer(req, resp, user, (form.get("service") or [None])[0], form.get("scope") or [])
        fingerprint = self.auth.htpasswd.fingerprint(user)
        if (form.get("access_type") or [""])[0] == "offline" and fingerprint:
            resp.media["refresh_token"] = self.auth.issuer.issue_refresh(user, fingerprint)

    def _refresh(self, req: falcon.Request, resp: falcon.Response, form: dict) -> None:
        token = (form.get("refresh_token") or [""])[0]
        if not token:
            raise BadRequest({"reason": "grant_type=refresh_token needs refresh_token"},
                             message="missing refresh token")
        try:
            claims = self.auth.issuer.verify_refresh(token)
        except jwt.InvalidTokenError as exc:
            self._failed(req)
            raise Unauthorized({"reason": f"invalid refresh token: {type(exc).__name__}"}) from None
        user = claims["sub"]
        current = self.auth.htpasswd.fingerprint(user) if self.auth.htpasswd is not None else None
        if current is None or not hmac.compare_digest(current, claims["pwd"]):
            self._failed(req)
            raise Unauthorized({"reason": "the password changed or the user is gone: sign in again"})
        self._answer(req, resp, user, (form.get("service") or [None])[0], form.get("scope") or [])

    def _failed(self, req: falcon.Request) -> None:
        """A refresh token refused counts against the address's failed-login budget, like a wrong password."""
        if self.auth.guard is not None:
            self.auth.guard.failed("", client_address(req, self.auth.proxies))

    def _refused(self, req: falcon.Request) -> Unauthorized:
        return Unauthorized({"reason": "invalid username or password"},
                            headers={"WWW-Authenticate": f'Basic realm="{self.auth.realm}"'})

    def _answer(self, req, resp, user: str | None, service: str | None, scopes: list[str]) -> None:
        issuer = self.auth.issuer
        if service and service != issuer.service:
            raise BadRequest({"service": service[:100], "reason": f"this token server serves {issuer.service!r}"},
                             message="unknown service")
        req.context.user = user
        rules = self.auth.rules
        access = []
        for scope in parse_scopes(scopes):
            if scope.type == "repository":
                allowed = rules.allowed(user, scope.name)
                wanted = set(ACTIONS) if "*" in scope.actions else set(scope.actions)
                access.append({"type": "repository", "name": scope.name,
                               "actions": [a for a in (PULL, PUSH, DELETE) if a in wanted & allowed]})
            elif scope.type == "registry" and scope.name == "catalog":
                access.append({"type": "registry", "name": "catalog",
                               "actions": ["*"] if rules.may_list_catalog(user) else []})
            elif scope.type == "registry" and scope.name == "admin":
                access.append({"type": "registry", "name": "admin", "actions": ["*"] if rules.is_admin(user) else []})
        resp.media = issuer.issue(user, access)
        resp.set_header("Cache-Control", "no-store")

