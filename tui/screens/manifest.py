"""One manifest in full: media type, digest, size, layers, image config, an index's platforms, referrers, and
the `docker pull` reference to copy. An index lists its platforms in a table: `enter` opens one as a manifest
screen of its own, `escape` comes back."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from ..client import ClientError, Manifest, RegistryClient
from ..format import exact_bytes, human_bytes, short_digest
from ..images import IMAGE_CONFIG_TYPES, Footprint, Inventory, load_footprint
from ..messages import LoadFailed, ManifestLoaded
from ..widgets.platforms import PlatformTable


def section(title: str) -> Text:
    return Text(f"\n{title}", style="bold underline")


def fields(rows: list[tuple[str, object]]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for name, value in rows:
        table.add_row(name, value if isinstance(value, Text) else Text(str(value)))
    return table


@dataclass
class Description:
    """What the screen shows: `head` above an index's platform table, `tail` below it (all of it in `head` for
    anything but an index)."""
    head: Group
    pull: list[str]
    platforms: list[Footprint] = field(default_factory=list)
    tail: Group = field(default_factory=Group)


def describe(client: RegistryClient, repository: str, manifest: Manifest, footprint: Footprint,
             tags: list[str]) -> Description:
    """Everything the screen shows, read through the API (the config blob and the referrers are fetched here)."""
    pull = [f"docker pull {client.host}/{repository}@{manifest.digest}"]
    pull += [f"docker pull {client.host}/{repository}:{t}" for t in tags[:3]]
    parts: list = [fields([
        ("Repository", repository),
        ("Media type", manifest.media_type or "?"),
        ("Digest", manifest.digest),
        ("Total size", exact_bytes(footprint.total_size)),
        ("Tags", ", ".join(tags) or "(none)"),
    ])]
    parts.append(section("Pull (c: copy the first)"))
    parts += [Text(line, overflow="fold", no_wrap=True) for line in pull]
    body = manifest.body
    if footprint.children:
        parts.append(section(f"Platforms ({len(footprint.children)}; enter: open one)"))
        referrers = describe_referrers(client, repository, manifest.digest)
        return Description(Group(*parts), pull, list(footprint.children), Group(*referrers))
    layers = body.get("layers") or []
    parts.append(section(f"Layers ({len(layers)})"))
    table = Table(box=None, padding=(0, 1), show_edge=False)
    for col in ("#", "digest", "size", "media type"):
        table.add_column(col, no_wrap=col != "media type", overflow="fold")
    for i, layer in enumerate(layers, 1):
        table.add_row(str(i), short_digest(layer.get("digest")), human_bytes(layer.get("size")),
                      Text(str(layer.get("mediaType", "?"))))  # Text: a str cell is read as markup
    parts.append(table)
    config = body.get("config") or {}
    if config.get("mediaType") in IMAGE_CONFIG_TYPES:
        parts += describe_config(client, repository, config)
    elif config:
        parts.append(fields([("Artifact type", body.get("artifactType") or config.get("mediaType", "?"))]))
    parts += describe_referrers(client, repository, manifest.digest)
    return Description(Group(*parts), pull)


def describe_config(client: RegistryClient, repository: str, descriptor: dict) -> list:
    parts: list = [section("Image config")]
    try:
        image = client.blob_json(repository, descriptor["digest"])
    except ClientError as exc:
        return parts + [Text(f"cannot read the config: {exc}", style="yellow")]
    cfg = image.get("config") or {}
    platform = f"{image.get('os', '?')}/{image.get('architecture', '?')}"
    if image.get("variant"):
        platform += "/" + image["variant"]
    labels = cfg.get("Labels") or {}
    parts.append(fields([
        ("Config", f"{short_digest(descriptor['digest'])}  {human_bytes(descriptor.get('size'))}"),
        ("Created", image.get("created", "?")),
        ("Platform", platform),
        ("Entrypoint", " ".join(cfg.get("Entrypoint") or []) or "-"),
        ("Cmd", " ".join(cfg.get("Cmd") or []) or "-"),
        ("Env", "\n".join(cfg.get("Env") or []) or "-"),
        ("Labels", "\n".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"),
    ]))
    history = image.get("history") or []
    if history:
        parts.append(section(f"History ({len(history)})"))
        for entry in history:
            marker = " (empty)" if entry.get("empty_layer") else ""
            parts.append(Text(f"  {entry.get('created_by', '?')}{marker}", overflow="fold"))
    return parts


def describe_referrers(client: RegistryClient, repository: str, digest: str) -> list:
    referrers = client.referrers(repository, digest)
    if referrers is None:
        return [section("Referrers"), Text("unknown: this server has no referrers API", style="dim")]
    parts: list = [section(f"Referrers ({len(referrers)})")]
    if not referrers:
        parts.append(Text("none (no signatures, SBOMs or attestations)", style="dim"))
        return parts
    table = Table(box=None, padding=(0, 1), show_edge=False)
    for col in ("artifact type", "digest", "size"):
        table.add_column(col, overflow="fold")
    for ref in referrers:
        table.add_row(Text(str(ref.get("artifactType") or "?")), short_digest(ref.get("digest")),
                      human_bytes(ref.get("size")))
    parts.append(table)
    return parts


class ManifestScreen(Screen):
    BINDINGS = [
        Binding("escape,backspace", "back", "Back"),
        Binding("c", "copy", "Copy pull ref"),
        Binding("j", "scroll(1)", "Down", show=False),
        Binding("k", "scroll(-1)", "Up", show=False),
    ]

    def __init__(self, repository: str, reference: str, digest: str | None = None,
                 inventory: Inventory | None = None, *, within: tuple[str, str] | None = None):
        """`within`: (the index's reference, this platform) when opened from an index's platform table."""
        super().__init__()
        self.repository = repository
        self.reference = reference
        self.digest = digest
        self.inventory = inventory
        self.within = within
        self.pull: list[str] = []
        self.platforms: list[Footprint] = []

    def compose(self) -> ComposeResult:
        title = Text.assemble((self.repository, "bold"), " : ", self.within[0] if self.within else self.reference)
        if self.within:
            title.append(f" › {self.within[1]}")  # the platform comes from the index: text, never markup
        yield Static(title, id="title")
        with VerticalScroll(id="detail"):
            yield Static("loading …", id="manifest")
            yield PlatformTable(id="platforms", classes="-hidden")
            yield Static("", id="manifest-tail")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#detail").focus()
        self.load()

    @work(thread=True, exclusive=True, group="manifest", exit_on_error=False)
    def load(self) -> None:
        client = self.app.client
        try:
            manifest = client.manifest(self.repository, self.digest or self.reference)
            cache = dict(self.inventory.footprints) if self.inventory else {}
            footprint = load_footprint(client, self.repository, manifest.digest, cache)
            if self.inventory:
                tags = self.inventory.by_digest().get(manifest.digest, [])
            else:
                tags = [] if self.within else [self.reference]
            self.post_message(ManifestLoaded(describe(client, self.repository, manifest, footprint, tags)))
        except Exception as exc:
            text = str(exc) if isinstance(exc, ClientError) else f"unexpected {type(exc).__name__}: {exc}"
            self.post_message(LoadFailed("manifest", text))

    @on(ManifestLoaded)
    def loaded(self, message: ManifestLoaded) -> None:
        description = message.description
        self.pull = description.pull
        self.platforms = description.platforms
        self.query_one("#manifest", Static).update(description.head)
        self.query_one("#manifest-tail", Static).update(description.tail)
        if self.platforms:
            table = self.query_one(PlatformTable)
            table.show(self.platforms)
            table.focus()

    @on(LoadFailed)
    def failed(self, message: LoadFailed) -> None:
        self.query_one("#manifest", Static).update(Text(message.error, style="bold red"))

    @on(DataTable.RowSelected, "#platforms")
    def open_platform(self, event: DataTable.RowSelected) -> None:
        child = self.platforms[int(event.row_key.value)]
        reference = self.within[0] if self.within else self.reference
        self.app.push_screen(ManifestScreen(self.repository, child.digest, child.digest, self.inventory,
                                            within=(reference, child.platform or short_digest(child.digest))))

    def action_scroll(self, lines: int) -> None:
        self.query_one("#detail", VerticalScroll).scroll_relative(y=lines, animate=False)

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_copy(self) -> None:
        if self.pull:
            self.app.copy_to_clipboard(self.pull[0].removeprefix("docker pull "))
            self.notify(f"copied: {self.pull[0]}")
