// Dockyard's web UI: a hash router and one function per page. Pages are built from the registry's HTTP API
// (./api.js) with DOM nodes and text only (./util.js); nothing here writes markup.

import {ApiError, INDEX_TYPES, Registry} from "./api.js";
import {
  clear, compareTags, exactBytes, formatBytes, formatTime, h, platformName, relativeTime, route, shortDigest,
} from "./util.js";

const PAGE = 50; // repositories per screen
const SCAN = 1000; // names per request while searching
const NAME = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$/;
const IMAGE_CONFIGS = new Set(["application/vnd.oci.image.config.v1+json",
                               "application/vnd.docker.container.image.v1+json"]);

const main = document.getElementById("main");
const notice = document.getElementById("notice");
const dialog = document.getElementById("dialog");
let registry = null;
let rendering = 0;

// -- start ---------------------------------------------------------------------------------------------------------

async function start() {
  applyTheme(localStorage.getItem("dockyard-ui-theme") || "");
  document.getElementById("theme").addEventListener("click", cycleTheme);
  let settings;
  try {
    const response = await fetch("config.json", {credentials: "omit", cache: "no-store"});
    settings = await response.json();
  } catch (error) {
    clear(main, errorBox(error));
    return;
  }
  registry = new Registry(settings);
  registry.onChange(() => {
    renderSession();
    render();
  });
  window.addEventListener("hashchange", () => render(true));
  document.addEventListener("keydown", shortcuts);
  renderSession();
  render();
}

function shortcuts(event) {
  const typing = /^(INPUT|TEXTAREA|SELECT)$/.test(document.activeElement?.tagName || "");
  if (event.key === "/" && !typing && !dialog.open) {
    const search = document.getElementById("search");
    if (search) {
      event.preventDefault();
      search.focus();
    }
  }
}

// The theme: the system's, or the one chosen with the Theme button (kept in localStorage: a preference, no secret).
function applyTheme(theme) {
  if (theme) document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
  const button = document.getElementById("theme");
  button.textContent = theme === "dark" ? "Theme: dark" : theme === "light" ? "Theme: light" : "Theme: system";
}

function cycleTheme() {
  const next = {"": "dark", dark: "light", light: ""}[document.documentElement.dataset.theme || ""];
  if (next) localStorage.setItem("dockyard-ui-theme", next);
  else localStorage.removeItem("dockyard-ui-theme");
  applyTheme(next);
}

let said = 0;

function say(text) {
  said = Date.now();
  clear(notice, text);
}

// -- routing -------------------------------------------------------------------------------------------------------

function currentRoute() {
  const hash = location.hash.replace(/^#\/?/, "");
  const at = hash.indexOf("?");
  return {path: at < 0 ? hash : hash.slice(0, at), params: new URLSearchParams(at < 0 ? "" : hash.slice(at + 1))};
}

const VIEWS = {
  "": repositoriesView, repositories: repositoriesView, repository: repositoryView, manifest: manifestView,
  admin: adminView, "sign-in": signInView,
};

async function render(navigated = false) {
  const ticket = ++rendering;
  const stale = () => ticket !== rendering;
  const {path, params} = currentRoute();
  for (const link of document.querySelectorAll(".bar nav a")) {
    if (link.getAttribute("href").replace(/^#\/?/, "") === (path === "repositories" ? "" : path)) {
      link.setAttribute("aria-current", "page");
    } else {
      link.removeAttribute("aria-current");
    }
  }
  if (navigated && Date.now() - said > 3000) clear(notice); // a notice outlives the page it was about only briefly
  const view = Object.hasOwn(VIEWS, path) ? VIEWS[path] : notFoundView; // "#/constructor" is no page
  const page = h("div", {class: "page", "data-view": path || "repositories"});
  clear(main, h("p", {class: "muted"}, "Loading…"));
  try {
    await view(page, params, stale);
  } catch (error) {
    page.append(errorBox(error));
  }
  if (stale()) return;
  clear(main, page);
  main.dataset.ready = String(ticket);
  if (navigated) main.focus({preventScroll: false});
}

function errorBox(error) {
  const box = h("div", {class: "error", role: "alert"});
  if (error instanceof ApiError) {
    box.append(h("strong", {}, error.code), " ", error.message);
    if (error.detail && Object.keys(error.detail).length) {
      box.append(h("pre", {class: "text"}, JSON.stringify(error.detail, null, 1)));
    }
    if (error.status === 401 && registry?.canSignIn && !registry.user) {
      box.append(" ", signInLink("Sign in"));
    }
  } else {
    box.append(String(error && error.message ? error.message : error));
  }
  return box;
}

function signInLink(text) {
  return h("a", {href: route("sign-in", {next: location.hash || "#/"})}, text);
}

function renderSession() {
  const session = document.getElementById("session");
  if (registry.user) {
    clear(session, h("span", {id: "signed-in-as"}, "Signed in as ", h("strong", {}, registry.user)),
          h("button", {type: "button", id: "sign-out", onclick: () => {
            registry.signOut();
            say("Signed out.");
          }}, "Sign out"));
  } else if (registry.canSignIn) {
    clear(session, h("span", {class: "muted"}, "Anonymous"), signInLink("Sign in"));
    session.lastChild.id = "sign-in";
  } else {
    clear(session);
  }
  registry.isAdmin().then((admin) => {
    document.getElementById("nav-admin").hidden = !admin;
  }, () => {
    document.getElementById("nav-admin").hidden = true;
  });
}

function notFoundView(page) {
  document.title = "Not found · Dockyard";
  page.append(h("h1", {}, "No such page"), h("p", {}, h("a", {href: "#/"}, "Repositories")));
}

// -- helpers for the pages -----------------------------------------------------------------------------------------

async function eachLimited(items, limit, work) {
  let next = 0;
  const workers = Array.from({length: Math.min(limit, items.length)}, async () => {
    while (next < items.length) {
      const item = items[next++];
      try {
        await work(item);
      } catch {
        // each item shows its own failure
      }
    }
  });
  await Promise.all(workers);
}

function table(headers, rows, {caption = null, id = null} = {}) {
  return h("div", {class: "table-wrap"},
           h("table", {id}, caption ? h("caption", {class: "muted"}, caption) : null,
             h("thead", {}, h("tr", {}, headers)), h("tbody", {}, rows)));
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    say(`Copied: ${text}`);
  } catch {
    // No clipboard (a page over plain HTTP on another host is not a secure context): show it to copy by hand.
    const field = h("input", {type: "text", readonly: true, value: text, class: "mono", "aria-label": "Text to copy",
                              size: Math.min(text.length, 80)});
    said = Date.now();
    clear(notice, "Copy with Ctrl+C (⌘C): ", field);
    field.focus();
    field.select();
  }
}

function copyButton(text, label) {
  return h("button", {type: "button", class: "copy link", title: text, "aria-label": `Copy: ${text}`,
                      onclick: () => copyText(text)}, label);
}

function pullCommand(reference, label) {
  const input = h("input", {type: "text", readonly: true, value: `docker pull ${reference}`,
                            "aria-label": `Pull command for ${label}`});
  const copy = h("button", {type: "button", class: "copy", onclick: () => copyText(input.value),
                            "aria-label": `Copy the pull command for ${label}`}, "Copy");
  return h("span", {class: "pull"}, input, copy);
}

function facts(pairs) {
  const list = h("dl", {class: "facts"});
  for (const [term, value] of pairs) {
    if (value === undefined || value === null || value === "") continue;
    list.append(h("dt", {}, term), h("dd", {}, value));
  }
  return list;
}

function keyValues(object, id) {
  const entries = Object.entries(object || {});
  if (!entries.length) return h("p", {class: "muted"}, "None.");
  return table([h("th", {}, "Key"), h("th", {}, "Value")],
               entries.map(([k, v]) => h("tr", {}, h("td", {class: "mono"}, k),
                                         h("td", {}, h("pre", {class: "text"}, String(v))))),
               {id});
}

function confirmDialog(title, body, {confirm = "Delete", danger = true, ready = () => true} = {}) {
  return new Promise((resolve) => {
    const ok = h("button", {type: "button", class: danger ? "danger" : "primary", id: "confirm"}, confirm);
    const cancel = h("button", {type: "button", id: "cancel"}, "Cancel");
    const finish = (value) => {
      dialog.close();
      resolve(value);
    };
    ok.addEventListener("click", () => finish(true));
    cancel.addEventListener("click", () => finish(false));
    dialog.onclose = () => resolve(false);
    ok.disabled = !ready();
    clear(dialog, h("h2", {id: "dialog-title"}, title), body, h("div", {class: "actions"}, cancel, ok));
    dialog.oninput = () => {
      ok.disabled = !ready();
    };
    dialog.showModal();
    cancel.focus();
  });
}

function validName(name) {
  if (!name || name.length > 255 || !NAME.test(name)) {
    throw new ApiError(400, "NAME_INVALID", "Not a repository name.", {name: String(name).slice(0, 300)});
  }
  return name;
}

function crumbs(...parts) {
  const nav = h("nav", {class: "crumbs", "aria-label": "Breadcrumb"});
  parts.forEach((part, i) => nav.append(i ? " › " : "", part));
  return nav;
}

// -- repositories --------------------------------------------------------------------------------------------------

async function repositoriesView(page, params, stale) {
  document.title = "Repositories · Dockyard";
  const query = (params.get("q") || "").trim().toLowerCase();
  const after = params.get("after") || "";
  page.append(h("h1", {}, "Repositories"));
  if (!(await registry.may("registry:catalog:*", "*"))) {
    page.append(h("p", {id: "no-catalog"}, "The repository list is not open to anonymous visitors. ",
                  registry.canSignIn ? signInLink("Sign in") : null));
    return;
  }
  const admin = await registry.isAdmin();
  const search = h("input", {type: "search", id: "search", value: query, placeholder: "Search repositories  ( / )",
                             "aria-label": "Search repositories by name", autocomplete: "off"});
  const results = h("div", {id: "results"});
  let timer = null;
  search.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      const q = search.value.trim().toLowerCase();
      history.replaceState(null, "", route("repositories", {q}));
      loadRepositories(results, q, "", admin, () => stale() || search.value.trim().toLowerCase() !== q)
        .catch((error) => clear(results, errorBox(error)));
    }, 250);
  });
  page.append(h("div", {class: "toolbar"}, h("div", {class: "grow"}, search)), results);
  await loadRepositories(results, query, after, admin, stale);
}

async function loadRepositories(results, query, after, admin, stale) {
  clear(results, h("p", {class: "muted"}, "Loading…"));
  let rows;
  let next = null;
  let scanned = 0;
  if (!query) {
    if (admin) {
      const page = await registry.repositoryPage(PAGE, after);
      rows = page.repositories;
      next = page.next;
    } else {
      const page = await registry.catalog(PAGE, after);
      rows = page.names.map((name) => ({name}));
      next = page.next;
    }
  } else {
    // A name may match anywhere: read the list a large page at a time, only until one screen of matches.
    rows = [];
    let cursor = after || null;
    for (;;) {
      const page = admin ? await registry.repositoryPage(SCAN, cursor) : await registry.catalog(SCAN, cursor);
      const items = admin ? page.repositories : page.names.map((name) => ({name}));
      scanned += items.length;
      if (stale()) return;
      for (const item of items) {
        if (rows.length === PAGE) {
          next = rows[rows.length - 1].name;
          break;
        }
        if (item.name.includes(query)) rows.push(item);
      }
      if (next || !page.next) break;
      cursor = page.next;
    }
  }
  if (stale()) return;
  const headers = [h("th", {scope: "col"}, "Repository"), h("th", {scope: "col", class: "num"}, "Tags")];
  if (admin) {
    headers.push(h("th", {scope: "col", class: "num"}, "Size, unique"),
                 h("th", {scope: "col", class: "num wide-only"}, "Shared"),
                 h("th", {scope: "col"}, "Last push"));
  }
  const counts = [];
  const body = rows.map((row) => {
    const tags = h("td", {class: "num"}, row.tags !== undefined ? String(row.tags) : "…");
    if (row.tags === undefined) counts.push([row.name, tags]);
    // A pull-through cached repository (issue 16) says where it comes from.
    const cached = row.upstream ? h("span", {class: "muted upstream", title: `a read-only cache of ${row.upstream.url}`},
                                    ` cached from ${row.upstream.url}`) : null;
    const cells = [h("td", {class: "name"}, h("a", {href: route("repository", {name: row.name})}, row.name), cached),
                   tags];
    if (admin) {
      cells.push(h("td", {class: "num", title: exactBytes(row.unique_bytes)}, formatBytes(row.unique_bytes)),
                 h("td", {class: "num wide-only", title: exactBytes(row.shared_bytes)}, formatBytes(row.shared_bytes)),
                 h("td", {title: formatTime(row.last_push)}, relativeTime(row.last_push)));
    }
    return h("tr", {}, cells);
  });
  const parts = [];
  if (!rows.length) {
    parts.push(h("p", {id: "empty"}, query ? "No repository name contains that." : "No repositories yet."));
  } else {
    parts.push(table(headers, body, {id: "repositories"}));
  }
  if (!admin) parts.push(h("p", {class: "muted"}, "Sizes and push times are shown to admins."));
  if (query) {
    parts.push(h("p", {class: "muted", id: "scanned"}, `Searched ${scanned.toLocaleString("en")} repositories.`));
  }
  const pager = h("div", {class: "pager"});
  if (after) pager.append(h("a", {href: route("repositories", {q: query}), id: "first-page"}, "First page"));
  if (next) {
    pager.append(h("a", {href: route("repositories", {q: query, after: next}), id: "next-page"},
                   query ? "More results" : "Next page"));
  }
  parts.push(pager);
  clear(results, parts);
  // Tag counts for what is on screen only, with one token request for all of them.
  if (counts.length) {
    try {
      await registry.prepare(counts.map(([name]) => name));
    } catch (error) {
      results.append(errorBox(error));
      return;
    }
    await eachLimited(counts, 4, async ([name, cell]) => {
      if (stale()) return;
      try {
        cell.textContent = String(await registry.tagCount(name));
      } catch {
        cell.textContent = "?";
      }
    });
  }
}

// -- a repository: its tags ----------------------------------------------------------------------------------------

async function repositoryView(page, params, stale) {
  const name = validName(params.get("name"));
  document.title = `${name} · Dockyard`;
  page.append(crumbs(h("a", {href: "#/"}, "Repositories"), name), h("h1", {}, name));
  const actions = await registry.allowed(Registry.repoScope(name, "pull,delete"));
  const may = (action) => actions === null || actions.includes(action) || actions.includes("*");
  if (!may("pull")) {
    page.append(h("p", {}, "You may not see this repository. ", registry.canSignIn && !registry.user
      ? signInLink("Sign in") : null));
    return;
  }
  const admin = await registry.isAdmin();
  const tags = await registry.tagDetails(name);
  if (stale()) return;
  const groups = new Map();
  for (const tag of tags) {
    const group = groups.get(tag.digest) || {digest: tag.digest, mediaType: tag.media_type, size: tag.size,
                                              pushed: tag.updated_at, tags: [], platforms: null, children: null};
    group.tags.push(tag.tag);
    if (tag.updated_at > group.pushed) group.pushed = tag.updated_at;
    groups.set(tag.digest, group);
  }
  for (const group of groups.values()) group.tags.sort(compareTags);

  const state = {sort: params.get("sort") || "name", order: params.get("order") === "desc" ? -1 : 1,
                 selected: new Set()};
  const host = location.host;
  const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
  const summary = h("p", {class: "muted", id: "summary"},
                    `${plural(tags.length, "tag")}, ${plural(groups.size, "manifest")}`);
  const deleteButton = h("button", {type: "button", class: "danger", id: "delete-selected", disabled: true},
                         "Delete selected");
  const toolbar = h("div", {class: "toolbar"}, summary);
  if (may("delete")) toolbar.append(deleteButton);
  if (admin) {
    toolbar.append(h("button", {type: "button", id: "delete-repository",
                                onclick: () => deleteRepository(name, tags.length, groups.size)},
                     "Delete repository"));
  }
  const holder = h("div");
  page.append(toolbar, holder);
  if (!tags.length) {
    holder.append(h("p", {}, "No tags."));
    return;
  }

  const updateSelection = () => {
    deleteButton.disabled = state.selected.size === 0;
    deleteButton.textContent = state.selected.size ? `Delete selected (${state.selected.size})` : "Delete selected";
  };
  deleteButton.addEventListener("click", () => deleteTags(name, groups, state.selected));

  const ordered = () => {
    const list = [...groups.values()];
    const best = (group) => group.tags[state.order > 0 ? 0 : group.tags.length - 1];
    const key = {
      name: (a, b) => compareTags(best(a), best(b)),
      pushed: (a, b) => (a.pushed || 0) < (b.pushed || 0) ? -1 : (a.pushed || 0) > (b.pushed || 0) ? 1 : 0,
      size: (a, b) => (a.size || 0) - (b.size || 0),
    }[state.sort] || (() => 0);
    return list.sort((a, b) => key(a, b) * state.order || compareTags(a.tags[0], b.tags[0]));
  };

  const sortButton = (key, label, before = null) => {
    const active = state.sort === key;
    return h("th", {scope: "col", "aria-sort": active ? (state.order > 0 ? "ascending" : "descending") : "none",
                    class: key === "size" ? "num" : null}, before, before ? " " : null,
             h("button", {type: "button", id: `sort-${key}`, onclick: () => {
               state.order = active ? -state.order : 1;
               state.sort = key;
               history.replaceState(null, "", route("repository", {name, sort: key,
                                                                   order: state.order > 0 ? "" : "desc"}));
               draw();
             }}, label, active ? (state.order > 0 ? " ▲" : " ▼") : ""));
  };

  const platformsCell = (group) => {
    const cell = h("td", {class: "platforms wide-only"});
    if (!INDEX_TYPES.has(group.mediaType)) {
      cell.append(h("span", {class: "muted"}, "image"));
      return cell;
    }
    if (group.platforms) cell.append(group.platforms.map((p) => p.name).join(", ") || "—");
    else cell.append("…");
    return cell;
  };

  const draw = () => {
    const allBox = h("input", {type: "checkbox", id: "select-all", "aria-label": "Select every tag"});
    const total = tags.length;
    allBox.checked = state.selected.size === total;
    allBox.indeterminate = state.selected.size > 0 && state.selected.size < total;
    allBox.addEventListener("change", () => {
      state.selected = allBox.checked ? new Set(tags.map((t) => t.tag)) : new Set();
      draw();
      updateSelection();
    });
    const headers = [sortButton("name", "Tag", may("delete") ? allBox : null),
                     h("th", {scope: "col"}, "Digest"), sortButton("size", "Size"),
                     h("th", {scope: "col", class: "wide-only"}, "Platforms"), sortButton("pushed", "Pushed")];
    const rows = ordered().map((group) => {
      const tagList = h("div", {class: "tags"});
      for (const tag of group.tags) {
        const box = may("delete") ? h("input", {type: "checkbox", value: tag, "data-tag": tag,
                                                "aria-label": `Select tag ${tag}`}) : null;
        if (box) {
          box.checked = state.selected.has(tag);
          box.addEventListener("change", () => {
            if (box.checked) state.selected.add(tag);
            else state.selected.delete(tag);
            updateSelection();
          });
        }
        tagList.append(h("div", {class: "tag", "data-tag": tag},
                         h("label", {}, box, h("span", {class: "mono"}, tag)), " ",
                         copyButton(`docker pull ${host}/${name}:${tag}`, "copy pull")));
      }
      return h("tr", {"data-digest": group.digest},
               h("td", {class: "name"}, tagList),
               h("td", {}, h("a", {href: route("manifest", {name, ref: group.digest}), class: "mono digest",
                                   title: group.digest}, shortDigest(group.digest))),
               h("td", {class: "num", title: exactBytes(group.size)}, formatBytes(group.size)),
               platformsCell(group),
               h("td", {title: formatTime(group.pushed)}, relativeTime(group.pushed)));
    });
    clear(holder, table(headers, rows, {id: "tags"}));
  };
  draw();
  updateSelection();

  // The platforms of each index, fetched after the table is shown.
  const indexes = [...groups.values()].filter((g) => INDEX_TYPES.has(g.mediaType));
  eachLimited(indexes, 4, async (group) => {
    if (stale()) return;
    const manifest = await registry.manifest(name, group.digest);
    group.children = (manifest.document.manifests || []).map((d) => ({digest: d.digest,
                                                                      name: platformName(d.platform)}));
    group.platforms = group.children.filter((c) => c.name && c.name !== "unknown/unknown");
    if (!stale()) draw();
  });
}

async function deleteTags(name, groups, selected) {
  // What goes: a manifest whose every tag is selected is deleted by digest (with its tags); other tags alone.
  const manifests = [];
  const alone = [];
  for (const group of groups.values()) {
    const chosen = group.tags.filter((t) => selected.has(t));
    if (!chosen.length) continue;
    if (chosen.length === group.tags.length) manifests.push(group);
    else alone.push({group, tags: chosen, kept: group.tags.filter((t) => !selected.has(t))});
  }
  const goingDigests = new Set(manifests.map((g) => g.digest));
  const details = h("div", {id: "delete-plan"});
  details.append(h("p", {}, `From ${name}:`));
  if (manifests.length) {
    const list = h("ul", {id: "plan-manifests"});
    for (const group of manifests) {
      const item = h("li", {}, "Manifest ", h("code", {}, shortDigest(group.digest)), ` (${formatBytes(group.size)}) `,
                     "and its tag", group.tags.length > 1 ? "s " : " ", h("strong", {}, group.tags.join(", ")));
      const sub = h("ul");
      if (INDEX_TYPES.has(group.mediaType)) {
        let children = group.children;
        if (!children) {
          const manifest = await registry.manifest(name, group.digest);
          children = (manifest.document.manifests || []).map((d) => ({digest: d.digest,
                                                                      name: platformName(d.platform)}));
        }
        for (const child of children) {
          const tagged = groups.get(child.digest);
          const inOther = [...groups.values()].find(
            (g) => g.digest !== group.digest && !goingDigests.has(g.digest)
                   && (g.children || []).some((c) => c.digest === child.digest));
          let fate = "stays in the repository untagged, until garbage collection with “delete untagged” removes it";
          if (tagged && !goingDigests.has(child.digest)) fate = `stays: tagged ${tagged.tags.join(", ")}`;
          else if (inOther) fate = `stays: also in the index tagged ${inOther.tags.join(", ")}`;
          sub.append(h("li", {class: "child"}, "Platform manifest ", h("code", {}, shortDigest(child.digest)),
                       child.name ? ` (${child.name})` : "", ": ", fate));
        }
      }
      try {
        const referrers = await registry.referrers(name, group.digest);
        if (referrers.length) {
          const kinds = [...new Set(referrers.map((r) => r.artifactType || r.mediaType))].join(", ");
          sub.append(h("li", {class: "referrers"}, `${referrers.length} referrer${referrers.length > 1 ? "s" : ""} (`,
                       kinds, ") stay, pointing at a deleted manifest, until garbage collection with ",
                       "“delete untagged”"));
        }
      } catch {
        // referrers unknown: say nothing
      }
      if (sub.childNodes.length) item.append(sub);
      list.append(item);
    }
    details.append(h("p", {}, "Deleted, with every tag pointing at them:"), list);
  }
  if (alone.length) {
    const list = h("ul", {id: "plan-tags"});
    for (const {group, tags, kept} of alone) {
      list.append(h("li", {}, "Tag", tags.length > 1 ? "s " : " ", h("strong", {}, tags.join(", ")),
                    " (the manifest ", h("code", {}, shortDigest(group.digest)), " stays, tagged ", kept.join(", "),
                    ")"));
    }
    details.append(h("p", {}, "Tags removed alone:"), list);
  }
  const count = `${selected.size} tag${selected.size === 1 ? "" : "s"}` +
                (manifests.length ? `, ${manifests.length} manifest${manifests.length === 1 ? "" : "s"}` : "");
  if (!(await confirmDialog(`Delete ${count}?`, details))) return;
  const failures = [];
  for (const group of manifests) {
    try {
      await registry.deleteManifest(name, group.digest);
    } catch (error) {
      failures.push(`${shortDigest(group.digest)}: ${error.message}`);
    }
  }
  for (const {tags} of alone) {
    for (const tag of tags) {
      try {
        await registry.deleteManifest(name, tag);
      } catch (error) {
        failures.push(`${tag}: ${error.message}`);
      }
    }
  }
  say(failures.length ? `Some deletions failed: ${failures.join("; ")}` : `Deleted ${count} from ${name}.`);
  render();
}

async function deleteRepository(name, tagCount, manifestCount) {
  const input = h("input", {type: "text", id: "confirm-name", autocomplete: "off", "aria-label": "Repository name"});
  const body = h("div", {}, h("p", {}, `Every tag (${tagCount}) and manifest (${manifestCount}) of `,
                               h("strong", {}, name), " goes; its blobs go at the next garbage collection unless ",
                               "another repository uses them."),
                 h("label", {}, "Type the repository name to confirm: ", input));
  if (!(await confirmDialog(`Delete the repository ${name}?`, body, {ready: () => input.value === name}))) return;
  try {
    await registry.deleteRepository(name);
    say(`Deleted the repository ${name}.`);
    location.hash = "#/";
  } catch (error) {
    say(`Could not delete ${name}: ${error.message}`);
  }
}

// -- a manifest ----------------------------------------------------------------------------------------------------

async function manifestView(page, params, stale) {
  const name = validName(params.get("name"));
  const reference = params.get("ref") || "";
  const isTag = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/.test(reference);
  if (!isTag && !/^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/.test(reference)) {
    throw new ApiError(400, "MANIFEST_INVALID", "Not a tag or digest.", {reference: reference.slice(0, 300)});
  }
  document.title = `${name}@${shortDigest(reference)} · Dockyard`;
  const manifest = await registry.manifest(name, reference);
  if (stale()) return;
  const doc = manifest.document;
  const isIndex = INDEX_TYPES.has(manifest.mediaType) || Array.isArray(doc.manifests);
  page.append(crumbs(h("a", {href: "#/"}, "Repositories"), h("a", {href: route("repository", {name})}, name),
                     shortDigest(manifest.digest)),
              h("h1", {}, `${name}@${shortDigest(manifest.digest)}`));
  const layers = Array.isArray(doc.layers) ? doc.layers : [];
  const total = (doc.config?.size || 0) + layers.reduce((sum, l) => sum + (l.size || 0), 0);
  page.append(facts([
    ["Digest", h("code", {id: "digest"}, manifest.digest)],
    ["Media type", h("code", {}, manifest.mediaType)],
    ["Artifact type", doc.artifactType ? h("code", {id: "artifact-type"}, String(doc.artifactType)) : null],
    ["Manifest size", `${formatBytes(manifest.size)} (${exactBytes(manifest.size)})`],
    ["Config and layers", isIndex ? null : `${formatBytes(total)} (${exactBytes(total)})`],
    ["Subject", doc.subject?.digest ? h("a", {href: route("manifest", {name, ref: String(doc.subject.digest)}),
                                             id: "subject"}, shortDigest(String(doc.subject.digest))) : null],
    ["Pull", pullCommand(`${location.host}/${name}@${manifest.digest}`, `${name}@${manifest.digest}`)],
  ]));
  if (doc.annotations && Object.keys(doc.annotations).length) {
    page.append(h("h2", {}, "Annotations"), keyValues(doc.annotations, "annotations"));
  }
  if (isIndex) {
    page.append(h("h2", {}, "Platforms"), table(
      [h("th", {scope: "col"}, "Platform"), h("th", {scope: "col"}, "Manifest"),
       h("th", {scope: "col", class: "num"}, "Size")],
      (doc.manifests || []).map((d) => h("tr", {}, h("td", {}, platformName(d.platform) || "—"),
                                         h("td", {}, h("a", {href: route("manifest", {name, ref: String(d.digest)}),
                                                            class: "mono platform", title: String(d.digest)},
                                                       shortDigest(d.digest))),
                                         h("td", {class: "num"}, formatBytes(d.size)))),
      {id: "platforms"}));
  } else {
    page.append(h("h2", {}, "Layers"), table(
      [h("th", {scope: "col", class: "num"}, "#"), h("th", {scope: "col"}, "Digest"),
       h("th", {scope: "col", class: "wide-only"}, "Media type"), h("th", {scope: "col", class: "num"}, "Size")],
      layers.map((l, i) => h("tr", {}, h("td", {class: "num"}, String(i + 1)),
                             h("td", {class: "mono", title: String(l.digest)}, shortDigest(l.digest)),
                             h("td", {class: "mono wide-only"}, String(l.mediaType || "")),
                             h("td", {class: "num", title: exactBytes(l.size)}, formatBytes(l.size)))),
      {id: "layers"}));
    if (doc.config?.digest) await configSection(page, name, doc.config);
  }
  const referrers = h("div", {id: "referrers-section"}, h("h2", {}, "Referrers"));
  page.append(referrers);
  try {
    const list = await registry.referrers(name, manifest.digest);
    referrers.append(list.length ? table(
      [h("th", {scope: "col"}, "Artifact type"), h("th", {scope: "col"}, "Manifest"),
       h("th", {scope: "col", class: "num"}, "Size"), h("th", {scope: "col", class: "wide-only"}, "Annotations")],
      list.map((r) => h("tr", {}, h("td", {class: "mono"}, String(r.artifactType || r.mediaType || "")),
                        h("td", {}, h("a", {href: route("manifest", {name, ref: String(r.digest)}),
                                            class: "mono referrer", title: String(r.digest)}, shortDigest(r.digest))),
                        h("td", {class: "num"}, formatBytes(r.size)),
                        h("td", {class: "wide-only"}, h("pre", {class: "text"},
                          Object.entries(r.annotations || {}).map(([k, v]) => `${k}: ${v}`).join("\n"))))),
      {id: "referrers"}) : h("p", {class: "muted", id: "no-referrers"}, "No referrers."));
  } catch (error) {
    referrers.append(errorBox(error));
  }
}

async function configSection(page, name, descriptor) {
  page.append(h("h2", {}, "Config"));
  if (!IMAGE_CONFIGS.has(descriptor.mediaType)) {
    page.append(facts([["Media type", h("code", {}, String(descriptor.mediaType))],
                       ["Digest", h("code", {}, String(descriptor.digest))], ["Size", formatBytes(descriptor.size)]]));
    return;
  }
  let config;
  try {
    config = await registry.blobJSON(name, descriptor.digest);
  } catch (error) {
    page.append(errorBox(error));
    return;
  }
  const run = config.config || {};
  const list = (value) => Array.isArray(value) ? h("code", {}, JSON.stringify(value)) : null;
  page.append(h("div", {id: "config"}, facts([
    ["Created", config.created ? `${formatTime(config.created)} (${relativeTime(config.created)})` : null],
    ["Platform", platformName(config) || null],
    ["Author", config.author ? String(config.author) : null],
    ["User", run.User ? String(run.User) : null],
    ["Working directory", run.WorkingDir ? String(run.WorkingDir) : null],
    ["Entrypoint", list(run.Entrypoint)],
    ["Cmd", list(run.Cmd)],
    ["Exposed ports", run.ExposedPorts ? Object.keys(run.ExposedPorts).join(", ") : null],
  ])));
  page.append(h("h2", {}, "Environment"),
              Array.isArray(run.Env) && run.Env.length
                ? h("pre", {class: "text", id: "env"}, run.Env.map(String).join("\n"))
                : h("p", {class: "muted"}, "None."),
              h("h2", {}, "Labels"), keyValues(run.Labels, "labels"));
  const history = Array.isArray(config.history) ? config.history : [];
  page.append(h("h2", {}, "History"), history.length ? table(
    [h("th", {scope: "col"}, "Created"), h("th", {scope: "col"}, "Created by"),
     h("th", {scope: "col", class: "wide-only"}, "Comment")],
    history.map((step) => h("tr", {class: step.empty_layer ? "muted" : null},
                            h("td", {}, formatTime(step.created)),
                            h("td", {}, h("pre", {class: "text"}, String(step.created_by || ""))),
                            h("td", {class: "wide-only"}, String(step.comment || "")))),
    {id: "history"}) : h("p", {class: "muted"}, "None."));
}

// -- admin ---------------------------------------------------------------------------------------------------------

async function adminView(page, params, stale) {
  document.title = "Admin · Dockyard";
  page.append(h("h1", {}, "Admin"));
  if (!(await registry.isAdmin())) {
    page.append(h("p", {id: "not-admin"}, "This page is for admins. ",
                  registry.canSignIn && !registry.user ? signInLink("Sign in") : null));
    return;
  }
  const [storage, readOnly] = await Promise.all([registry.storage(), registry.readOnly()]);
  if (stale()) return;
  page.append(h("h2", {}, "Storage"), h("div", {class: "cards", id: "storage"},
    h("div", {class: "card"}, h("div", {class: "muted"}, "Total"),
      h("div", {class: "big", title: exactBytes(storage.total_bytes)}, formatBytes(storage.total_bytes))),
    h("div", {class: "card"}, h("div", {class: "muted"}, "Blobs"),
      h("div", {class: "big"}, formatBytes(storage.blob_bytes)), `${storage.blobs} blobs`),
    h("div", {class: "card"}, h("div", {class: "muted"}, "Manifests"),
      h("div", {class: "big"}, formatBytes(storage.manifest_bytes)))));
  const largest = [...(storage.repositories || [])].sort((a, b) => b.unique_bytes - a.unique_bytes).slice(0, 20);
  if (largest.length) {
    page.append(h("h2", {}, "Largest repositories"), table(
      [h("th", {scope: "col"}, "Repository"), h("th", {scope: "col", class: "num"}, "Unique"),
       h("th", {scope: "col", class: "num"}, "Shared")],
      largest.map((r) => h("tr", {},
                           h("td", {class: "name"}, h("a", {href: route("repository", {name: r.name})}, r.name)),
                           h("td", {class: "num"}, formatBytes(r.unique_bytes)),
                           h("td", {class: "num"}, formatBytes(r.shared_bytes))))));
  }

  const toggle = h("input", {type: "checkbox", id: "read-only", role: "switch"});
  toggle.checked = readOnly;
  const toggleState = h("span", {id: "read-only-state"}, readOnly ? "on: writes are refused" : "off");
  toggle.addEventListener("change", async () => {
    toggle.disabled = true;
    try {
      const now = await registry.setReadOnly(toggle.checked);
      toggle.checked = now;
      toggleState.textContent = now ? "on: writes are refused" : "off";
      say(now ? "Read-only mode is on." : "Read-only mode is off.");
    } catch (error) {
      toggle.checked = !toggle.checked;
      say(`Could not switch read-only mode: ${error.message}`);
    } finally {
      toggle.disabled = false;
    }
  });
  page.append(h("h2", {}, "Maintenance"), h("label", {class: "switch"}, toggle, "Read-only mode: ", toggleState));

  const untagged = h("input", {type: "checkbox", id: "gc-untagged"});
  const report = h("div", {id: "gc-report", "aria-live": "polite"});
  const dryRun = h("button", {type: "button", id: "gc-dry-run"}, "Dry run");
  const realRun = h("button", {type: "button", class: "danger", id: "gc-run", disabled: true}, "Collect garbage now");
  const runGc = async (dry) => {
    dryRun.disabled = realRun.disabled = true;
    clear(report, h("p", {class: "muted"}, dry ? "Measuring…" : "Collecting…"));
    try {
      const result = await registry.gc({dry_run: dry, delete_untagged: untagged.checked});
      clear(report, h("p", {id: dry ? "gc-would-free" : "gc-freed"},
                      dry ? "Would free " : "Freed ", h("strong", {}, formatBytes(result.bytes_freed)),
                      ` (${exactBytes(result.bytes_freed)}): ${result.blobs_removed} blobs, `,
                      `${result.manifests_removed} manifests` + (dry ? "." : ` in ${result.seconds} s.`)));
      if (result.manifests?.length) {
        report.append(h("ul", {}, result.manifests.slice(0, 50).map((m) => h("li", {class: "mono"},
          `${m.repository || ""}@${shortDigest(m.digest || "")}`))));
      }
      realRun.disabled = !dry;
    } catch (error) {
      clear(report, errorBox(error));
    } finally {
      dryRun.disabled = false;
    }
  };
  untagged.addEventListener("change", () => {
    realRun.disabled = true;
    clear(report);
  });
  dryRun.addEventListener("click", () => runGc(true));
  realRun.addEventListener("click", () => runGc(false));
  page.append(h("h2", {}, "Garbage collection"),
              h("p", {class: "muted"}, "A dry run first says what would go and the bytes it would free; then run it."),
              h("div", {class: "toolbar"}, h("label", {}, untagged, " Also delete untagged manifests"), dryRun,
                realRun),
              report);
}

// -- sign-in -------------------------------------------------------------------------------------------------------

async function signInView(page, params) {
  document.title = "Sign in · Dockyard";
  page.append(h("h1", {}, "Sign in"));
  const next = params.get("next") || "#/";
  if (!registry.canSignIn) {
    page.append(h("p", {}, registry.auth ? "This registry has no token endpoint, so the web UI cannot sign in."
                                         : "This registry has no accounts: everything is open."));
    return;
  }
  if (registry.user) {
    page.append(h("p", {}, `Signed in as ${registry.user}.`));
    return;
  }
  const user = h("input", {type: "text", id: "username", name: "username", autocomplete: "username", required: true,
                           autocapitalize: "none", spellcheck: "false"});
  const password = h("input", {type: "password", id: "password", name: "password",
                               autocomplete: "current-password", required: true});
  const problem = h("div", {id: "sign-in-error"});
  const submit = h("button", {type: "submit", class: "primary", id: "sign-in-submit"}, "Sign in");
  const form = h("form", {class: "signin", method: "post"},
                 h("label", {}, "User name", user), h("label", {}, "Password", password), submit, problem);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    clear(problem);
    try {
      const secret = password.value;
      password.value = ""; // the password leaves the page with this request and is kept nowhere
      await registry.signIn(user.value.trim(), secret);
      say(`Signed in as ${registry.user}.`);
      location.hash = next.startsWith("#/") && !next.startsWith("#/sign-in") ? next : "#/";
    } catch (error) {
      clear(problem, errorBox(error));
      submit.disabled = false;
      password.focus();
    }
  });
  page.append(form, h("p", {class: "muted"}, "Your password is sent once, to get a short-lived token kept in this ",
                      "page's memory only. Reloading the page signs you out."));
  setTimeout(() => user.focus(), 0);
}

start();
