"""A deletion plan in words: what goes, what stays, and the bytes garbage collection will give back; and the line
that says what becomes of the referrers of the manifests that go."""

from __future__ import annotations

from rich.text import Text

from ..format import exact_bytes, human_bytes, plural, short_digest
from ..retention import Plan, ReferrerChoice


def describe_plan(plan: Plan, groups: dict[str, list[str]], *, limit: int = 8) -> Text:
    """`groups`: digest -> its tags, to say which tags go with each manifest."""
    text = Text()
    if plan.empty:
        text.append("Nothing to delete.", style="bold")
        return text
    text.append(f"{plural(len(plan.tags), 'tag')}, {plural(len(plan.manifests), 'manifest')}", style="bold")
    if plan.referrers:
        text.append(f" ({plural(len(plan.referrers), 'referrer')})", style="bold")
    text.append(" would be deleted from ")
    text.append(plan.repository, style="bold")
    text.append(".\n")
    text.append("Frees ")
    text.append(exact_bytes(plan.bytes_freed), style="bold green")
    text.append(f" ({plural(len(plan.blobs), 'blob')} + {human_bytes(plan.manifest_bytes)} of manifests)\n")
    if plan.kept_by_others:
        text.append(f"Kept: {plural(len(plan.kept_by_others), 'blob')} "
                    f"({human_bytes(sum(plan.kept_by_others.values()))}) "
                    "that other repositories still use.\n", style="yellow")
    if plan.other_repositories_checked is None:
        text.append("Other repositories: unknown (no admin API): blobs they share are counted as freed.\n",
                    style="dim")
    # the manifests first, then their referrers (deleted before them, listed after them: each under its subject)
    shown = [d for d in plan.manifests if d not in plan.referrers] + [d for d in plan.manifests if d in plan.referrers]
    for digest in shown[:limit]:
        tags = groups.get(digest) or []
        text.append(f"  ✗ {short_digest(digest)}  ")
        if digest in plan.referrers:
            text.append("referrer: ")
            text.append(plan.referrers[digest], style="magenta")  # Text: the artifact type is the pusher's
            text.append(f"  {', '.join(tags)}" if tags else "", style="red")
        else:
            text.append(", ".join(tags) if tags else "(untagged / platform manifest)", style="red")
        text.append("\n")
    if len(plan.manifests) > limit:
        text.append(f"  … and {len(plan.manifests) - limit} more manifests\n")
    if plan.untag:
        shown = ", ".join(plan.untag[:limit]) + (" …" if len(plan.untag) > limit else "")
        text.append(f"Tags removed alone (other tags keep their manifest): {shown}\n")
    if plan.unknown:
        text.append(f"Could not read the manifests of: {', '.join(plan.unknown[:limit])}\n", style="yellow")
    return text



def describe_referrers(choice: ReferrerChoice) -> Text:
    """The dialog's line about referrers while the manifests would go alone (the default): how many stay behind,
    or why they are unknown; empty when nothing refers to these manifests."""
    if choice.plan is not None:
        count = len(choice.plan.referrers)
        subjects = "this manifest" if len(choice.plan.manifests) - count == 1 else "these manifests"
        return Text(f"{plural(count, 'referrer')} (signatures, SBOMs) of {subjects} "
                    f"{'stays' if count == 1 else 'stay'}, orphaned. r: delete them too\n", style="yellow")
    if choice.nothing_refers:
        return Text()
    return Text(f"Referrers: {choice.reason}.\n", style="yellow")
