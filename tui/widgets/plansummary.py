"""A deletion plan in words: what goes, what stays, and the bytes garbage collection will give back."""

from __future__ import annotations

from rich.text import Text

from ..format import exact_bytes, human_bytes, plural, short_digest
from ..retention import Plan


def describe_plan(plan: Plan, groups: dict[str, list[str]], *, limit: int = 8) -> Text:
    """`groups`: digest -> its tags, to say which tags go with each manifest."""
    text = Text()
    if plan.empty:
        text.append("Nothing to delete.", style="bold")
        return text
    text.append(f"{plural(len(plan.tags), 'tag')}, {plural(len(plan.manifests), 'manifest')}", style="bold")
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
    for digest in plan.manifests[:limit]:
        tags = groups.get(digest) or []
        text.append(f"  ✗ {short_digest(digest)}  ")
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
