"""Scale check: Dockyard's cost of a catalog page, a tags page and a manifest GET stays flat as it grows.

Run from the repository root (Dockyard only; it takes several minutes and writes --store bytes):

    python bench/scale.py [--repositories 1000] [--tags 100000] [--store 10GiB] [--duration 5] [--json PATH]
                          [--database sqlite|postgresql]

Starts `dockyard serve` (as deployed: gunicorn, default workers) on a free 127.0.0.1 port with a new data directory,
then grows it in three stages to 1%, 10% and 100% of the planned data (the figures are labelled 1x, 10x and 100x),
seeding over the HTTP API with parallel clients:

- repositories `scale/r0000`, ... each with `--tags / --repositories` tags, every tag its own OCI image manifest
  (distinct by an annotation) over the repository's config and layer blobs;
- the layers are `--store / --repositories / LAYERS_PER_REPOSITORY` bytes each (a distinct header, then a shared
  random pattern): medium blobs that fill the store to --store at 100%.

After each stage it measures with wrk (2 threads, 32 connections, --duration seconds, after a 1 s warm-up):
`_catalog?n=100` (first page and a page from the middle, `last=`), `tags/list?n=100` of a repository in the
middle, and a manifest GET by tag there, with the Accept header docker sends. The table shows req/s, p50 and p99
at each stage and the ratio of the last stage's req/s to the first's. It refuses to start unless the temporary
directory's filesystem has 3x --store free.

`--database postgresql` runs the same on PostgreSQL as the metadata backend: a server started for the run
(`postgres.py`), migrated with `dockyard migrate`, and `database` set for `dockyard serve`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from harness import (
    DOCKYARD_CMD,
    _executable,
    BenchError,
    alternate,
    cell,
    dockyard,
    format_size,
    load_average,
    main_guard,
    nproc,
    parse_size,
    process_tree,
    progress,
    vm_rss,
)
from postgres import postgres
from rates import WRK_CONNECTIONS, WRK_THREADS, run_wrk, wrk_binary
from seed import DOCKER_ACCEPT, Connection, Seeder, image_config

STAGES = (0.01, 0.1, 1.0)
LAYERS_PER_REPOSITORY = 4
PATTERN_SIZE = 8 << 20
BLOB_THREADS = 6  # hashing releases the GIL on large buffers; more threads only queue on 2 cores
MANIFEST_THREADS = 16
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
FLAT_FLOOR = 0.7  # (req/s / control req/s) at 100x must be at least this share of the same at 1x to be flat
CONTROL = "GET /v2/ (control)"


def repository(index: int) -> str:
    return f"scale/r{index:04d}"


@dataclass(frozen=True)
class Plan:
    repositories: int
    tags_per_repository: int
    layer_size: int

    def stage_repositories(self, fraction: float) -> int:
        return max(1, round(self.repositories * fraction))

    @property
    def catalog_page(self) -> int:
        """Catalog pages must be full at the first stage too, or a later one would answer more for its money."""
        return max(1, min(100, self.stage_repositories(STAGES[0]) // 2))


class Grower:
    """Seeds repositories [done, upto) with their blobs and tagged manifests."""

    def __init__(self, port: int, plan: Plan) -> None:
        self.port = port
        self.plan = plan
        self.pattern = os.urandom(PATTERN_SIZE)
        self.done = 0

    def layer(self, index: int, number: int) -> bytes:
        header = hashlib.sha256(f"scale layer {index} {number}".encode()).digest()
        body = (self.pattern * (self.plan.layer_size // PATTERN_SIZE + 1))[: self.plan.layer_size - len(header)]
        return header + body

    def push_blobs(self, conn: Connection, index: int) -> dict:
        name = repository(index)
        config = image_config(name)
        layers = []
        for number in range(LAYERS_PER_REPOSITORY):
            data = self.layer(index, number)
            layers.append({"mediaType": OCI_LAYER, "size": len(data), "digest": conn.upload_blob(name, data)})
        return {"mediaType": OCI_CONFIG, "size": len(config), "digest": conn.upload_blob(name, config), "layers": layers}

    def put_tag(self, conn: Connection, item: tuple[int, dict, int]) -> None:
        index, refs, number = item
        tag = f"v{number:05d}"
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {key: refs[key] for key in ("mediaType", "size", "digest")}, "layers": refs["layers"],
            "annotations": {"org.opencontainers.image.version": tag},
        }).encode()
        conn.expect("PUT", f"/v2/{repository(index)}/manifests/{tag}", 201, manifest, {"Content-Type": OCI_MANIFEST})

    def grow_to(self, upto: int) -> dict:
        indices = range(self.done, upto)
        started = time.perf_counter()
        refs = Seeder(self.port, BLOB_THREADS).run(self.push_blobs, indices)
        blobs_seconds = time.perf_counter() - started
        items = [(index, ref, number) for index, ref in zip(indices, refs, strict=True)
                 for number in range(self.plan.tags_per_repository)]
        started = time.perf_counter()
        Seeder(self.port, MANIFEST_THREADS).run(self.put_tag, items)
        tags_seconds = time.perf_counter() - started
        self.done = upto
        layer_bytes = len(indices) * LAYERS_PER_REPOSITORY * self.plan.layer_size
        progress(f"  +{len(indices)} repositories: {layer_bytes / 1e6:.0f} MB of layers in {blobs_seconds:.1f} s "
                 f"({layer_bytes / blobs_seconds / 1e6:.0f} MB/s), {len(items):,} manifests+tags in {tags_seconds:.1f} s "
                 f"({len(items) / tags_seconds:.0f}/s)")
        return {"blob_seconds": blobs_seconds, "tag_seconds": tags_seconds, "tags": len(items)}


def figures_for(repositories: int, plan: Plan) -> dict[str, tuple[str, dict]]:
    """The figures at a stage with `repositories`; every page holds the same number of entries at every stage."""
    middle = repository(repositories // 2)
    page = plan.catalog_page
    return {
        f"catalog first page n={page}": (f"/v2/_catalog?n={page}", {}),
        f"catalog mid page n={page}": (f"/v2/_catalog?n={page}&last={repository((repositories - page) // 2)}", {}),
        "tags/list?n=100": (f"/v2/{middle}/tags/list?n=100", {}),
        "manifest GET by tag": (f"/v2/{middle}/manifests/v{plan.tags_per_repository // 2:05d}",
                                {"Accept": DOCKER_ACCEPT}),
    }


def measure_stage(port: int, figures: dict[str, tuple[str, dict]], duration: float, repeats: int,
                  label: str) -> dict[str, dict]:
    """Every figure and the control `repeats` times, interleaved (order flipping), after a 1 s warm-up each.

    Other work on the machine takes CPU from the server unevenly over minutes; the control, a request whose cost
    cannot depend on the registry's size, is measured between the others so each figure can be read against it.
    """
    paths = {CONTROL: ("/v2/", {})} | figures
    for path, headers in paths.values():
        run_wrk(port, path, 1, headers)  # warm-up, discarded
    results: dict[str, list] = {name: [] for name in paths}
    for number in range(repeats):
        for name in alternate(list(paths), number):
            path, headers = paths[name]
            result = run_wrk(port, path, duration, headers)
            if result.errors:
                raise BenchError(f"{name} at {label}: {result.errors} errors ({result.as_dict()})")
            results[name].append(result)
    summary = {}
    for name, runs in results.items():
        summary[name] = {
            "requests_per_s": statistics.median(r.requests_per_s for r in runs),
            "p50_ms": statistics.median(r.p50_ms for r in runs),
            "p99_ms": statistics.median(r.p99_ms for r in runs),
            "runs": [r.as_dict() for r in runs],
        }
        progress(f"  {name:<26} {summary[name]['requests_per_s']:7.0f} req/s, p50 {summary[name]['p50_ms']:6.1f} ms, "
                 f"p99 {summary[name]['p99_ms']:6.1f} ms (medians of {repeats})")
    return summary


def du(path: Path) -> int:
    """Bytes allocated on disk under `path` (a file or a directory)."""
    if path.is_file():
        return path.stat().st_blocks * 512
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


def run(args: argparse.Namespace) -> int:
    wrk_binary()
    plan = Plan(args.repositories, max(1, args.tags // args.repositories),
                max(1 << 10, args.store // args.repositories // LAYERS_PER_REPOSITORY))
    load_start = load_average()
    started_at = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    stages = []
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dockyard-scale-")))
        free = shutil.disk_usage(workdir).free
        if free < 3 * args.store:
            raise BenchError(f"{workdir} has {free / 2**30:.1f} GiB free; this run needs 3 x {format_size(args.store)}"
                             " (point TMPDIR elsewhere or lower --store)")
        settings, database = {}, None
        if args.database == "postgresql":
            database = stack.enter_context(postgres(workdir))
            subprocess.run([_executable("dockyard"), "migrate", "--database", database.url], check=True,
                           capture_output=True, timeout=120)
            settings["database"] = database.url
        progress("starting dockyard")
        target = stack.enter_context(dockyard(workdir, args.dockyard_cmd, settings=settings))
        grower = Grower(target.port, plan)
        for fraction in STAGES:
            upto = plan.stage_repositories(fraction)
            label = f"{round(fraction / STAGES[0])}x"
            progress(f"stage {label}: growing to {upto} repositories, {upto * plan.tags_per_repository:,} tags")
            seeding = grower.grow_to(upto)
            os.sync()
            figures = measure_stage(target.port, figures_for(upto, plan), args.duration, args.repeats, label)
            data = workdir / "data"
            stages.append({
                "label": label, "repositories": upto, "tags": upto * plan.tags_per_repository,
                "store_bytes": du(data / "blobs"),
                "database_bytes": database.database_bytes() if database else du(data / "registry.db"),
                "wal_bytes": 0 if database else du(data / "registry.db-wal"),
                "largest_process_rss_bytes": max(vm_rss(pid) for pid in process_tree(target.pid)),
                "seeding": seeding, "figures": figures,
            })
        load_end = load_average()
        report(args, plan, started_at, (load_start, load_end), stages)  # before the (slow) removal of the data
        progress("stopping dockyard and removing its data")
    return 0


def report(args: argparse.Namespace, plan: Plan, started_at: str, load: tuple[float, float], stages: list) -> None:
    load_start, load_end = load
    print()
    print(f"python bench/scale.py {' '.join(sys.argv[1:])}".rstrip() + f"    ({started_at})")
    print(f"metadata: {args.database}")
    print(f"nproc {nproc()}; load average (1 min) {load_start:.2f} at start, {load_end:.2f} at end")
    print(f"wrk {WRK_THREADS} threads {WRK_CONNECTIONS} connections, {args.duration:g} s runs after a 1 s warm-up, "
          f"medians of {args.repeats} interleaved runs per stage; '/ control' = req/s divided by GET /v2/'s req/s "
          f"at the same stage; flat = that at the last stage >= {FLAT_FLOOR:g} x the first\n")
    print(format_table(stages))
    if args.json:
        document = {"started_at": started_at, "argv": sys.argv[1:], "nproc": nproc(), "database": args.database,
                    "loadavg_1min": {"start": load_start, "end": load_end}, "plan": plan.__dict__, "stages": stages}
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        print(f"\nresults written to {args.json}")
    sys.stdout.flush()


def format_table(stages: list[dict]) -> str:
    labels = [s["label"] for s in stages]
    width = max(28, *(len(name) + 12 for name in stages[0]["figures"]))
    lines = [f"{'':<{width}}" + "".join(f"{label:>12}" for label in labels)]
    lines.append(f"{'repositories':<{width}}" + "".join(f"{s['repositories']:>12,}" for s in stages))
    lines.append(f"{'tags (= manifests)':<{width}}" + "".join(f"{s['tags']:>12,}" for s in stages))
    lines.append(f"{'blob store (GiB)':<{width}}" + "".join(f"{s['store_bytes'] / 2**30:>12.2f}" for s in stages))
    lines.append(f"{'database (MiB)':<{width}}" + "".join(f"{s['database_bytes'] / 2**20:>12.1f}" for s in stages))
    if any(s["wal_bytes"] for s in stages):
        lines.append(f"{'registry.db-wal (MiB)':<{width}}" + "".join(f"{s['wal_bytes'] / 2**20:>12.1f}"
                                                                   for s in stages))
    lines.append(f"{'largest process RSS (MiB)':<{width}}"
                 + "".join(f"{s['largest_process_rss_bytes'] / 2**20:>12.0f}" for s in stages))
    lines.append("")
    header = f"{'figure':<{width}}" + "".join(f"{label:>12}" for label in labels) + f"{'last/first':>12}  flat"
    lines += [header, "-" * len(header)]
    for name in stages[0]["figures"]:
        rows = [(unit, [s["figures"][name][key] for s in stages])
                for key, unit in (("requests_per_s", "req/s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"))]
        if name != CONTROL:
            rows.append(("/ control", [s["figures"][name]["requests_per_s"] / s["figures"][CONTROL]["requests_per_s"]
                                       for s in stages]))
        for unit, values in rows:
            first, last = values[0], values[-1]
            row = f"{name + ', ' + unit:<{width}}" + "".join(f"{cell(v):>12}" for v in values)
            row += f"{cell(last / first if first else None):>12}"
            if unit == "/ control":
                row += "  " + ("yes" if first and last / first >= FLAT_FLOOR else "NO")
            lines.append(row)
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repositories", type=int, default=1000, help="repositories at 100%% (default 1000)")
    parser.add_argument("--tags", type=int, default=100_000, help="tags over all repositories at 100%% (default 100000)")
    parser.add_argument("--store", type=parse_size, default="10GiB", help="layer bytes at 100%% (default 10GiB)")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per wrk measurement (default 3)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="measurements of each figure per stage, interleaved; medians are shown (default 3)")
    parser.add_argument("--dockyard-cmd", default=DOCKYARD_CMD,
                        help=f"command that serves Dockyard; {{port}} and {{data}} are filled in (default: "
                             f"{DOCKYARD_CMD!r})")
    parser.add_argument("--json", type=Path, help="also write every stage's figures as JSON to this file")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite",
                        help="the metadata backend: SQLite in the data directory (default), or a PostgreSQL "
                             "started for the run")
    args = parser.parse_args(argv)
    if args.repositories < 100:
        parser.error("--repositories must be at least 100 (the first stage is 1% of it)")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.duration < 1:
        parser.error("--duration must be at least 1 second")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return main_guard(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
