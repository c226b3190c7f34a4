// The registry's HTTP API, as every client sees it: V2, Dockyard's admin API and the token endpoint.
//
// Sign-in: the password goes once to the token endpoint (grant_type=password, access_type=offline) and is never
// kept; what comes back (a refresh token and short-lived access tokens, one per set of scopes) lives in this
// module's memory only: never in localStorage, sessionStorage, cookies or IndexedDB. Every request is made with
// `credentials: "omit"`, so the browser neither sends nor prompts for Basic credentials of its own (those could not
// be signed out of, and a browser attaches them to any site's request, which invites cross-site request forgery).
// Reloading the page signs out.
//
// Tokens also tell the page what the caller may do (their `access` claim), so it offers only what the server
// would allow, and asks the server for nothing it would refuse. The server decides all the same.

export const MANIFEST_TYPES = [
  "application/vnd.oci.image.index.v1+json",
  "application/vnd.oci.image.manifest.v1+json",
  "application/vnd.docker.distribution.manifest.list.v2+json",
  "application/vnd.docker.distribution.manifest.v2+json",
];
export const INDEX_TYPES = new Set([MANIFEST_TYPES[0], MANIFEST_TYPES[2]]);
const CLIENT_ID = "dockyard-web-ui";
const EARLY = 20; // seconds before expiry a token is replaced

export class ApiError extends Error {
  constructor(status, code, message, detail) {
    super(message);
    this.status = status;
    this.code = code;
    this.detail = detail;
  }
}

function decodeClaims(token) {
  const payload = token.split(".")[1] || "";
  const text = atob(payload.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(payload.length / 4) * 4, "="));
  return JSON.parse(new TextDecoder().decode(Uint8Array.from(text, (c) => c.charCodeAt(0))));
}

async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: keep the status line
  }
  const error = body && Array.isArray(body.errors) && body.errors[0];
  if (error) return new ApiError(response.status, String(error.code), String(error.message), error.detail);
  return new ApiError(response.status, "HTTP", `${response.status} ${response.statusText}`, null);
}

export class Registry {
  constructor(settings) {
    this.api = settings.api || "/v2/";
    this.tokenEndpoint = settings.token_endpoint || null;
    this.auth = Boolean(settings.auth);
    this.user = null;
    this.listeners = new Set();
    this.forget();
  }

  forget() {
    this.refreshToken = null;
    this.tokens = new Map(); // scope -> {token, expires, access}
  }

  onChange(listener) {
    this.listeners.add(listener);
  }

  changed() {
    for (const listener of this.listeners) listener(this.user);
  }

  get canSignIn() {
    return this.auth && Boolean(this.tokenEndpoint);
  }

  async signIn(username, password) {
    const form = new URLSearchParams({grant_type: "password", username, password, access_type: "offline",
                                      client_id: CLIENT_ID, scope: "registry:catalog:* registry:admin:*"});
    const response = await fetch(this.tokenEndpoint, {method: "POST", body: form, credentials: "omit",
                                                      cache: "no-store"});
    if (!response.ok) throw await errorOf(response);
    const body = await response.json();
    this.forget();
    this.user = username;
    this.refreshToken = body.refresh_token || null;
    this.store(["registry:catalog:*", "registry:admin:*"], body);
    this.changed();
  }

  signOut() {
    this.user = null;
    this.forget();
    this.changed();
  }

  store(scopes, body) {
    const token = body.token || body.access_token;
    const claims = decodeClaims(token);
    const expires = Date.now() + 1000 * Math.max(Number(body.expires_in) || 60, EARLY * 2) - EARLY * 1000;
    const entry = {token, expires, access: Array.isArray(claims.access) ? claims.access : []};
    for (const scope of scopes) this.tokens.set(scope, entry);
    return entry;
  }

  // Tokens for every scope asked for, fetching one token for all the scopes not yet held.
  async tokensFor(scopes) {
    if (!this.auth || !this.tokenEndpoint) return null;
    const now = Date.now();
    const missing = scopes.filter((scope) => !this.covered(scope, now));
    if (missing.length) {
      let response;
      if (this.user && !this.refreshToken) {
        this.signOut();
        throw new ApiError(401, "UNAUTHORIZED", "Your session has ended: sign in again.", null);
      }
      if (this.refreshToken) {
        const form = new URLSearchParams({grant_type: "refresh_token", refresh_token: this.refreshToken,
                                          client_id: CLIENT_ID, scope: missing.join(" ")});
        response = await fetch(this.tokenEndpoint, {method: "POST", body: form, credentials: "omit",
                                                    cache: "no-store"});
        if (response.status === 401) {
          this.signOut();
          throw new ApiError(401, "UNAUTHORIZED", "Your session has ended: sign in again.", null);
        }
      } else {
        const query = new URLSearchParams(missing.map((scope) => ["scope", scope]));
        response = await fetch(`${this.tokenEndpoint}?${query}`, {credentials: "omit", cache: "no-store"});
      }
      if (!response.ok) throw await errorOf(response);
      this.store(missing, await response.json());
    }
    return scopes.map((scope) => this.covered(scope, Date.now()) || this.tokens.get(scope));
  }

  // A live token for the scope: the one fetched for it, or any other that grants all of its actions.
  covered(scope, now) {
    const own = this.tokens.get(scope);
    if (own && own.expires > now) return own;
    const [type, ...rest] = scope.split(":");
    const wanted = rest.pop().split(",");
    const name = rest.join(":");
    for (const entry of this.tokens.values()) {
      if (entry.expires <= now) continue;
      const grant = entry.access.find((a) => a.type === type && a.name === name);
      if (grant && wanted.every((w) => grant.actions.includes(w) || grant.actions.includes("*"))) {
        this.tokens.set(scope, entry);
        return entry;
      }
    }
    return null;
  }

  // The actions granted for one scope ("repository:team/app:pull,delete" -> ["pull", "delete"]). Without auth,
  // everything; with auth but no token endpoint, unknown (null): the page then just tries.
  async allowed(scope) {
    if (!this.auth) return ["*", "pull", "push", "delete"];
    if (!this.tokenEndpoint) return null;
    const [entry] = await this.tokensFor([scope]);
    const [type, ...rest] = scope.split(":");
    const name = rest.slice(0, -1).join(":");
    const grant = entry.access.find((a) => a.type === type && a.name === name);
    return grant ? grant.actions : [];
  }

  async may(scope, action) {
    const actions = await this.allowed(scope);
    return actions === null ? true : actions.includes(action) || actions.includes("*");
  }

  async request(method, path, {scope = null, accept = null, json = undefined, raw = false} = {}) {
    const headers = {};
    if (accept) headers.Accept = accept;
    if (scope) {
      const entries = await this.tokensFor([scope]);
      if (entries) headers.Authorization = `Bearer ${entries[0].token}`;
    }
    let body;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    }
    const url = path.startsWith("/") ? path : this.api + path;
    const response = await fetch(url, {method, headers, body, credentials: "omit", cache: "no-store"});
    if (!response.ok) throw await errorOf(response);
    if (raw) return response;
    const isJSON = (response.headers.get("Content-Type") || "").includes("json");
    const text = method === "HEAD" ? "" : await response.text();
    return {response, body: isJSON && text ? JSON.parse(text) : null};
  }

  // -- what the pages ask ----------------------------------------------------------------------------------------

  static repoScope(name, actions = "pull") {
    return `repository:${name}:${actions}`;
  }

  static nextLast(response) {
    const link = response.headers.get("Link") || "";
    const match = /<([^>]+)>\s*;\s*rel="?next"?/.exec(link);
    return match ? new URL(match[1], location.href).searchParams.get("last") : null;
  }

  async isAdmin() {
    return this.may("registry:admin:*", "*");
  }

  async catalog(n, last) {
    const query = new URLSearchParams({n: String(n)});
    if (last) query.set("last", last);
    const {response, body} = await this.request("GET", `_catalog?${query}`, {scope: "registry:catalog:*"});
    return {names: body.repositories || [], next: Registry.nextLast(response)};
  }

  async repositoryPage(n, last) {
    const query = new URLSearchParams({n: String(n)});
    if (last) query.set("last", last);
    const {response, body} = await this.request("GET", `_dockyard/repositories?${query}`,
                                                {scope: "registry:admin:*"});
    return {repositories: body.repositories || [], next: Registry.nextLast(response)};
  }

  // Tokens for many repositories in one token request, before asking about each.
  async prepare(names, actions = "pull") {
    await this.tokensFor(names.map((name) => Registry.repoScope(name, actions)));
  }

  async tagCount(name) {
    const {body} = await this.request("GET", `${name}/tags/list`, {scope: Registry.repoScope(name)});
    return (body.tags || []).length;
  }

  async tagList(name) {
    const {body} = await this.request("GET", `${name}/tags/list`, {scope: Registry.repoScope(name)});
    return body.tags || [];
  }

  // Every tag with digest, media type, size and push time (the admin API's tag details; pull is enough).
  async tagDetails(name) {
    const tags = [];
    let last = null;
    do {
      const query = new URLSearchParams({n: "1000"});
      if (last) query.set("last", last);
      const {response, body} = await this.request("GET", `_dockyard/repositories/${name}/tags?${query}`,
                                                  {scope: Registry.repoScope(name)});
      tags.push(...(body.tags || []));
      last = Registry.nextLast(response);
    } while (last);
    return tags;
  }

  async manifest(name, reference) {
    const response = await this.request("GET", `${name}/manifests/${reference}`,
                                        {scope: Registry.repoScope(name), accept: MANIFEST_TYPES.join(", "),
                                         raw: true});
    const text = await response.text();
    return {digest: response.headers.get("Docker-Content-Digest"), mediaType: response.headers.get("Content-Type"),
            size: new TextEncoder().encode(text).length, document: JSON.parse(text)};
  }

  async blobJSON(name, digest) {
    const response = await this.request("GET", `${name}/blobs/${digest}`,
                                        {scope: Registry.repoScope(name), raw: true});
    return JSON.parse(await response.text());
  }

  async referrers(name, digest) {
    const {body} = await this.request("GET", `${name}/referrers/${digest}`, {scope: Registry.repoScope(name)});
    return body.manifests || [];
  }

  async deleteManifest(name, reference) {
    await this.request("DELETE", `${name}/manifests/${reference}`, {scope: Registry.repoScope(name, "delete")});
  }

  async deleteRepository(name) {
    const {body} = await this.request("DELETE", `_dockyard/repositories/${name}`, {scope: "registry:admin:*"});
    return body;
  }

  async storage() {
    return (await this.request("GET", "_dockyard/storage", {scope: "registry:admin:*"})).body;
  }

  async gc(options) {
    return (await this.request("POST", "_dockyard/gc", {scope: "registry:admin:*", json: options})).body;
  }

  async readOnly() {
    return (await this.request("GET", "_dockyard/read-only", {scope: "registry:admin:*"})).body.read_only;
  }

  async setReadOnly(value) {
    return (await this.request("PUT", "_dockyard/read-only", {scope: "registry:admin:*",
                                                             json: {read_only: value}})).body.read_only;
  }
}
