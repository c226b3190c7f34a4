"""Retention rules and the deletion plan: which tags go, which manifests go with them, how many bytes come back;
and, when the operator asks, the same deletion with the referrers of those manifests (signatures, SBOMs).

Bytes are counted the way garbage collection will find them: a blob is freed only when no kept manifest of this
repository references it and (where the admin API tells) no other repository holds it; a manifest is deleted
only when every tag pointing at it goes, and an index's child only when no kept index references it. Referrers
are found with the OCI referrers API; those of kept manifests stay reachable, so their blobs are kept too.
"""

from __future__ import annotations

import fnmatch
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable, Iterable

from .client import ClientError, RegistryClient, RepositoryStats
from .images import Footprint, Inventory, TagRow, load_footprint

REFERRER_DEPTH = 4  # levels of referrers of referrers (a signature of an SBOM is two); digests rule out cycles
KEPT_LIMIT = 200  # kept manifests whose referrers are asked for; beyond it the bytes freed are an upper bound


@dataclass(frozen=True)
class RetentionRules:
    """Tags matching `pattern` (a glob; all tags when empty) are candidates; of these the newest `keep_newest`
    are kept, and of the rest those older than `older_than_days` go (all of the rest when no age is given).
    With no rule at all nothing is selected."""
    keep_newest: int | None = None
    older_than_days: float | None = None
    pattern: str | None = None

    @property
    def empty(self) -> bool:
        return self.keep_newest is None and self.older_than_days is None and not self.pattern


def select(tags: Iterable[TagRow], rules: RetentionRules, now: datetime) -> list[str]:
    """The tags the rules delete. A tag whose date is unknown is never deleted by age, and counts as oldest."""
    if rules.empty:
        return []
    candidates = [t for t in tags if not rules.pattern or fnmatch.fnmatchcase(t.tag, rules.pattern)]
    oldest = datetime.min.replace(tzinfo=now.tzinfo)
    ordered = sorted(candidates, key=lambda t: (t.date or oldest, t.tag), reverse=True)
    if rules.keep_newest is not None:
        ordered = ordered[max(0, rules.keep_newest):]
    if rules.older_than_days is not None:
        limit = now - timedelta(days=rules.older_than_days)
        ordered = [t for t in ordered if t.date is not None and t.date < limit]
    return sorted(t.tag for t in ordered)


@dataclass
class Plan:
    repository: str
    tags: list[str]  # every tag that goes
    untag: list[str]  # tags deleted on their own: other tags keep their manifest
    manifests: list[str]  # manifests deleted by digest (with all their tags), indexes before their children
    blobs: dict[str, int] = field(default_factory=dict)  # blobs freed, digest -> size
    manifest_bytes: int = 0
    kept_by_others: dict[str, int] = field(default_factory=dict)  # would be freed, but other repositories hold them
    unknown: list[str] = field(default_factory=list)  # tags whose manifest could not be read
    other_repositories_checked: bool | None = None  # None: the server cannot tell (no admin API)
    referrers: dict[str, str] = field(default_factory=dict)  # referrers among `manifests`: digest -> artifact type

    @property
    def bytes_freed(self) -> int:
        return sum(self.blobs.values()) + self.manifest_bytes

    @property
    def empty(self) -> bool:
        return not self.tags and not self.manifests


def plan(repository: str, tags: dict[str, str | None], footprints: dict[str, Footprint], doomed: Iterable[str],
         *, held_elsewhere: set[str] | None = None, manifests: Iterable[str] = (),
         also_kept: Iterable[str] = ()) -> Plan:
    """`tags`: every tag of the repository -> its digest; `doomed`: the tags to delete; `manifests`: digests to
    delete outright (with every tag that points at them); `held_elsewhere`: blobs other repositories hold;
    `also_kept`: untagged manifests that stay reachable (the referrers of kept manifests)."""
    doomed = set(doomed)
    groups: dict[str, set[str]] = {}
    for tag, digest in tags.items():
        if digest:
            groups.setdefault(digest, set()).add(tag)
    forced = set(manifests)
    for digest in forced:
        doomed |= groups.get(digest, set())
    unknown = sorted(t for t in doomed if not tags.get(t) or tags[t] not in footprints)
    going = {d for d, members in groups.items() if members <= doomed} | forced
    kept = {d for d in groups if d not in going} | (set(also_kept) - going)

    kept_manifests: dict[str, int] = {}
    kept_blobs: dict[str, int] = {}
    for digest in kept:
        fp = footprints.get(digest)
        if fp is None:
            continue
        kept_manifests.update(fp.manifests())
        kept_blobs.update(fp.all_blobs())
    # A tag on a platform manifest that a kept index still lists: the tag goes, the manifest stays.
    going -= set(kept_manifests)
    untag = sorted(t for t in doomed if tags.get(t) not in going)

    # Indexes (and other manifests whose tags all go) first, then children no kept index references:
    # deleting a child first would leave a dangling index behind if the run stopped half way.
    nested = {m for d in going if d in footprints for m in footprints[d].manifests() if m != d}
    tops = sorted(going, key=lambda d: (d in nested, d))
    children: list[str] = []
    gone_manifests: dict[str, int] = {}
    candidate_blobs: dict[str, int] = {}
    for digest in tops:
        fp = footprints.get(digest)
        if fp is None:
            continue
        for member, size in fp.manifests().items():
            if member in kept_manifests or member in gone_manifests:
                continue
            gone_manifests[member] = size
            if member not in going:
                children.append(member)
        candidate_blobs.update(fp.all_blobs())
    order = tops + children

    freed = {d: s for d, s in candidate_blobs.items() if d not in kept_blobs}
    held = {d: s for d, s in freed.items() if held_elsewhere and d in held_elsewhere}
    for d in held:
        del freed[d]
    return Plan(repository, sorted(doomed), untag, order, freed, sum(gone_manifests.values()), held, unknown,
                None if held_elsewhere is None else True)


def blobs_held_elsewhere(client: RegistryClient, repository: str, blobs: Iterable[str],
                         stats: dict[str, RepositoryStats], *, limit: int = 5000,
                         cancelled: Callable[[], bool] = lambda: False) -> set[str] | None:
    """Which of `blobs` other repositories also hold, asked only of repositories whose admin stats say they
    share bytes (HEAD /v2/<other>/blobs/<digest>). None when it would take more than `limit` requests."""
    own = stats.get(repository)
    blobs = list(blobs)
    if own is not None and own.shared_bytes == 0:
        return set()
    others = [name for name, s in stats.items() if name != repository and s.shared_bytes > 0]
    if len(others) * len(blobs) > limit:
        return None
    held: set[str] = set()
    for name in others:
        for digest in blobs:
            if digest in held:
                continue
            if cancelled():
                return None
            try:
                if client.blob_exists(name, digest):
                    held.add(digest)
            except ClientError:
                return None
    return held


def make_plan(client: RegistryClient, admin: bool | None, inventory: Inventory, stats: dict[str, RepositoryStats],
              doomed: Iterable[str], manifests: Iterable[str] = (), *, footprints: dict[str, Footprint] | None = None,
              also_kept: Iterable[str] = ()) -> tuple[Plan, str]:
    """The plan for deleting `doomed` tags and `manifests` from the inventory's repository, with the blobs other
    repositories hold left out where the admin API lets us find them; and a note when it could not check.
    `footprints`: the inventory's, unless the caller has read more (referrers)."""
    doomed, manifests, also_kept = list(doomed), list(manifests), list(also_kept)  # each is read twice below
    footprints = inventory.footprints if footprints is None else footprints
    with inventory.lock:
        tags = {t: r.digest for t, r in inventory.tags.items()}
    result = plan(inventory.repository, tags, footprints, doomed, manifests=manifests, also_kept=also_kept)
    note = ""
    if admin:
        held = blobs_held_elsewhere(client, inventory.repository, result.blobs, stats) if result.blobs else set()
        if held is None:
            result.other_repositories_checked = False
            note = "Too many repositories to check which share these blobs: the bytes are an upper bound."
        else:
            result = plan(inventory.repository, tags, footprints, doomed, manifests=manifests,
                          held_elsewhere=held, also_kept=also_kept)
    return result, note


# -- referrers -------------------------------------------------------------------------------------------------


def find_referrers(client: RegistryClient, repository: str, subjects: Iterable[str], *,
                   depth: int = REFERRER_DEPTH, threads: int = 8) -> dict[str, dict] | None:
    """The manifests whose subject is one of `subjects`, and those whose subject is one of these (a signature of
    an SBOM), `depth` levels down: digest -> its descriptor from the referrers API, the deepest level first (the
    order to delete them in). None when the registry has no referrers API."""
    level = list(dict.fromkeys(subjects))
    seen = set(level)
    levels: list[dict[str, dict]] = []
    answers: dict[str, list[dict] | None] = {}
    if level:  # one subject first, alone: a registry without the API answers 404, and the rest need not be asked
        answers[level[0]] = client.referrers(repository, level[0])
        if answers[level[0]] is None:
            return None
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in range(depth):
            if not level:
                break
            asked = [digest for digest in level if digest not in answers]
            answers.update(zip(asked, pool.map(lambda digest: client.referrers(repository, digest), asked)))
            found: dict[str, dict] = {}
            for subject in level:
                if answers[subject] is None:
                    return None
                for descriptor in answers[subject]:
                    digest = descriptor.get("digest") if isinstance(descriptor, dict) else None
                    if isinstance(digest, str) and digest not in seen:
                        seen.add(digest)
                        found[digest] = descriptor
            levels.append(found)
            level = list(found)
    ordered: dict[str, dict] = {}
    for found in reversed(levels):
        ordered.update(found)
    return ordered


NO_REFERRERS_API = ("this registry has no referrers API (GET /v2/<name>/referrers/<digest>): the signatures and "
                    "SBOMs of these manifests cannot be found, and stay")
NOTHING_REFERS = "nothing refers to these manifests: no signatures, SBOMs or attestations"


@dataclass
class ReferrerChoice:
    """What the deletion dialog offers besides the plan: the same deletion with the referrers of its manifests.
    `plan` is None when that is not on offer, and `reason` says why."""
    plan: Plan | None
    reason: str = ""
    note: str = ""

    @property
    def nothing_refers(self) -> bool:
        return self.reason == NOTHING_REFERS


def with_referrers(client: RegistryClient, admin: bool | None, inventory: Inventory,
                   stats: dict[str, RepositoryStats], doomed: Iterable[str], manifests: Iterable[str],
                   alone: Plan, *, kept_limit: int = KEPT_LIMIT) -> ReferrerChoice | None:
    """The deletion `alone` plans, with every referrer of the manifests it deletes (and their referrers) deleted
    before them, so a run cut short leaves no referrer without its subject. None when `alone` deletes no manifest."""
    if not alone.manifests:
        return None
    repository = inventory.repository
    try:
        found = find_referrers(client, repository, alone.manifests)
    except ClientError as exc:
        return ReferrerChoice(None, f"the referrers could not be listed: {exc}")
    if found is None:
        return ReferrerChoice(None, NO_REFERRERS_API)
    if not found:
        return ReferrerChoice(None, NOTHING_REFERS)
    footprints = dict(inventory.footprints)
    note = ""
    try:
        _read_footprints(client, repository, found, footprints)
        # What stays reachable: the tagged manifests that stay, their children, and the referrers of all of these.
        # Garbage collection keeps the blobs those referrers use (often the same empty config), so they free nothing.
        with inventory.lock:
            tagged = {row.digest for row in inventory.tags.values() if row.digest}
        kept: set[str] = set()
        for digest in tagged - set(alone.manifests) - set(found):
            kept |= set(footprints[digest].manifests()) if digest in footprints else {digest}
        if len(kept) > kept_limit:
            kept_referrers: dict[str, dict] = {}
            note = "Too many manifests stay to ask which blobs their referrers use: the bytes are an upper bound."
        else:
            kept_referrers = find_referrers(client, repository, kept) or {}
            _read_footprints(client, repository, kept_referrers, footprints)
    except ClientError as exc:
        return ReferrerChoice(None, f"the referrers could not be read: {exc}")
    result, held_note = make_plan(client, admin, inventory, stats, doomed, [*manifests, *found],
                                  footprints=footprints, also_kept=kept_referrers)
    result.manifests = [d for d in found if d in result.manifests] + [d for d in result.manifests if d not in found]
    result.referrers = {d: str(found[d].get("artifactType") or "?") for d in found if d in result.manifests}
    return ReferrerChoice(result, note=" ".join(n for n in (held_note, note) if n))


def _read_footprints(client: RegistryClient, repository: str, digests: Iterable[str],
                     footprints: dict[str, Footprint]) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda digest: load_footprint(client, repository, digest, footprints), list(digests)))
