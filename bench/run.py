"""Issue 7's benchmark: every figure, Dockyard next to the reference registry, in one run, with the goals.

Run from the repository root:

    python bench/run.py [--quick] [--only FIGURE,...] [--rounds N] [--duration SECONDS] [--json PATH]

Starts Dockyard as deployed (`dockyard serve`: gunicorn, its default workers; and a second `dockyard serve` on
the same data directory with `accel_redirect`, behind real nginx, for the pull-through-nginx figure) and the
reference registry (Distribution 2.8.2, also behind the same nginx), each on free 127.0.0.1 ports with data in a
temporary directory; seeds both identically over the HTTP API; then runs one discarded warm-up round and N timed
rounds of every figure, the two registries alternating which goes first, and prints medians, ratios and whether
each goal is met, with nproc and the load average at the start and the end. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import blobs
import limits
from harness import (
    DOCKYARD_CMD,
    BenchError,
    Target,
    alternate,
    cell,
    dockyard,
    format_size,
    load_average,
    main_guard,
    median,
    nproc,
    parse_size,
    progress,
    ratio,
    reference_registry,
)
from nginx_front import accel_prefix, nginx
from rates import (
    WRK_CONNECTIONS,
    WRK_THREADS,
    SequenceResult,
    UploadsResult,
    WrkResult,
    run_wrk,
    small_blobs,
    small_uploads,
    tag_puts,
    wrk_binary,
)
from seed import DOCKER_ACCEPT, Connection, Image, Seeder, image_config

REGISTRIES = ["dockyard", "reference"]
MANIFEST_REPO = "bench/manifest"
TAGS_REPO = "bench/tags"
TAG_PUT_REPO = "bench/tagput"
UPLOADS_REPO = "bench/small"
CATALOG_PREFIX = "bench/catalog/r"
SEED_THREADS = 16

# The figures, in table order. `--only` takes these names (and "blobs" for the first three and the memory).
BLOB_FIGURES = ["push_monolithic", "push_chunked", "pull"]
WRK_FIGURES = ["manifest_tag", "manifest_digest", "tags_list", "tags_page", "catalog"]
ALL_FIGURES = [*BLOB_FIGURES, "pull_nginx", "manifest_tag", "manifest_digest", "tag_put", "tags_list", "tags_page",
               "catalog", "small_uploads", "memory"]


@dataclass(frozen=True)
class Plan:
    """What one run does: sizes, counts and durations (full or --quick)."""

    blob_size: int
    chunk: int
    rounds: int  # blob rounds
    rate_rounds: int  # request-rate rounds: the median of these, with min and max
    duration: float  # seconds per wrk measurement
    warmup_duration: float
    tag_count: int  # tags in TAGS_REPO
    repository_count: int  # repositories with one tagged manifest each, for _catalog
    tag_puts: int  # per round
    uploads: int  # per round
    upload_size: int
    upload_threads: int


def make_plan(args: argparse.Namespace) -> Plan:
    quick = args.quick
    return Plan(
        blob_size=args.size or (128 << 20 if quick else 1 << 30),
        chunk=args.chunk,
        rounds=args.rounds or (1 if quick else 3),
        rate_rounds=args.rate_rounds or (3 if quick else 5),
        duration=args.duration or (4.0 if quick else 10.0),
        warmup_duration=1.0 if quick else 2.0,
        tag_count=10_000,
        repository_count=1_000,
        tag_puts=200 if quick else 500,
        uploads=500 if quick else 2_000,
        upload_size=16 << 10,
        upload_threads=50,
    )


# --- Seeding ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seeded:
    image: Image
    tags: list[str]
    repositories: list[str]


def seed(port: int, plan: Plan, figures: set[str]) -> Seeded:
    """The same repositories, tags and manifests on a registry, over its HTTP API, in parallel."""
    conn = Connection(port)
    config, layer = image_config("bench"), b"bench layer\n" * 100
    image = conn.push_image(MANIFEST_REPO, config, [layer], "latest")
    conn.push_image(TAG_PUT_REPO, config, [layer], "base")
    conn.close()
    seeder = Seeder(port, SEED_THREADS)
    tags = []
    if figures & {"tags_list", "tags_page"}:
        conn.push_image(TAGS_REPO, config, [layer], "base")
        conn.close()
        tags = [f"t{index:05d}" for index in range(plan.tag_count)]
        seeder.run(lambda c, tag: c.put_manifest(TAGS_REPO, tag, image.manifest), tags)
    repositories = []
    if "catalog" in figures:
        repositories = [f"{CATALOG_PREFIX}{index:04d}" for index in range(plan.repository_count)]
        seeder.run(lambda c, repository: c.push_image(repository, config, [layer], "latest"), repositories)
    return Seeded(image, tags, repositories)


def check_answers(port: int, name: str, seeded: Seeded, figures: set[str]) -> dict[str, str]:
    """What each GET figure answers, checked once before timing; notes on answers that differ from Dockyard's."""
    notes = {}
    conn = Connection(port)
    try:
        for reference in ("latest", seeded.image.digest):
            answer = conn.expect("GET", f"/v2/{MANIFEST_REPO}/manifests/{reference}", 200,
                                 headers={"Accept": DOCKER_ACCEPT})
            if answer.body != seeded.image.manifest or answer.headers.get("Docker-Content-Digest") != seeded.image.digest:
                raise BenchError(f"{name}: GET manifest {reference} did not answer the manifest pushed")
        if seeded.tags:
            listed = json.loads(conn.expect("GET", f"/v2/{TAGS_REPO}/tags/list", 200).body)["tags"]
            if sorted(listed) != sorted([*seeded.tags, "base"]):
                raise BenchError(f"{name}: tags/list answered {len(listed)} tags, not the {len(seeded.tags) + 1} seeded")
            page = json.loads(conn.expect("GET", f"/v2/{TAGS_REPO}/tags/list?n=100", 200).body)["tags"]
            if len(page) != 100:
                notes["tags_page"] = f"{name} ignores n: tags/list?n=100 answered all {len(page)} tags"
        if seeded.repositories:
            page = json.loads(conn.expect("GET", "/v2/_catalog?n=100", 200).body)["repositories"]
            if len(page) != 100:
                raise BenchError(f"{name}: _catalog?n=100 answered {len(page)} repositories")
    finally:
        conn.close()
    return notes


# --- Request-rate rounds ------------------------------------------------------------------------------------


@dataclass
class RateResults:
    """Per registry and figure: one result dict per timed round (keys: per_s, p50_ms, p99_ms, errors, ...)."""

    rounds: dict[str, dict[str, list[dict]]] = field(default_factory=lambda: {r: {} for r in REGISTRIES})
    warmup: dict[str, dict[str, dict]] = field(default_factory=lambda: {r: {} for r in REGISTRIES})

    def add(self, registry: str, figure: str, number: int, result: dict) -> None:
        if number == 0:
            self.warmup[registry][figure] = result
        else:
            self.rounds[registry].setdefault(figure, []).append(result)

    def median(self, registry: str, figure: str, key: str) -> float | None:
        return median([r[key] for r in self.rounds[registry].get(figure, [])])

    def paired(self, figure: str, key: str) -> Rounds:
        """`key` of every timed round of `figure`, per registry, in round order."""
        return Rounds(*(tuple(r[key] for r in self.rounds[n].get(figure, [])) for n in REGISTRIES))

    def total(self, registry: str, figure: str, key: str) -> int | None:
        results = self.rounds[registry].get(figure)
        return None if results is None else sum(r.get(key, 0) for r in results)


def wrk_paths(image: Image) -> dict[str, tuple[str, dict[str, str]]]:
    accept = {"Accept": DOCKER_ACCEPT}
    return {
        "manifest_tag": (f"/v2/{MANIFEST_REPO}/manifests/latest", accept),
        "manifest_digest": (f"/v2/{MANIFEST_REPO}/manifests/{image.digest}", accept),
        "tags_list": (f"/v2/{TAGS_REPO}/tags/list", {}),
        "tags_page": (f"/v2/{TAGS_REPO}/tags/list?n=100", {}),
        "catalog": ("/v2/_catalog?n=100", {}),
    }


def mirrored(targets: list[Target], number: int) -> list[tuple[Target, int]]:
    """The slots of one round: each registry twice, in mirrored order (A B B A; B A A B in odd rounds), with the
    half of the round's work each slot does. Drift in the machine's speed over the round (other work starting or
    ending) then weighs on both registries alike, instead of on whichever ran second."""
    order = alternate(targets, number)
    return [(target, 0) for target in order] + [(target, 1) for target in order[::-1]]


def combine(figure: str, parts: list) -> dict:
    """One registry's two halves of a round as one result: rates over the summed counts and times; for wrk, the
    latency percentiles are the mean of the two halves' (wrk reports percentiles, not its histogram)."""
    if figure == "tag_put":
        return SequenceResult(sum(p.count for p in parts), sum(p.seconds for p in parts),
                              [v for p in parts for v in p.latencies_ms]).as_dict()
    if figure == "small_uploads":
        errors = [p.first_error for p in parts if p.first_error]
        return UploadsResult(sum(p.count for p in parts), sum(p.seconds for p in parts),
                             sum(p.errors for p in parts), errors[0] if errors else None).as_dict()
    requests = sum(p.requests for p in parts)
    seconds = sum(p.requests / p.requests_per_s for p in parts if p.requests_per_s)
    latency = {key: statistics.mean(p.latency_ms[key] for p in parts) for key in parts[0].latency_ms}
    socket_errors = {key: sum(p.socket_errors[key] for p in parts) for key in parts[0].socket_errors}
    merged = WrkResult(requests / seconds if seconds else 0.0, requests, latency, socket_errors,
                       sum(p.non_2xx for p in parts))
    return wrk_result(merged)


def rate_rounds(targets: list[Target], plan: Plan, figures: list[str], image: Image) -> RateResults:
    results = RateResults()
    paths = wrk_paths(image)
    run_id = os.urandom(4).hex()
    for number in range(plan.rate_rounds + 1):
        warm = number == 0
        progress("warm-up round (discarded)" if warm else f"round {number}/{plan.rate_rounds}")
        for figure in figures:
            # Made before the clock starts, the same for both registries.
            uploads = small_blobs(f"{run_id} {number}", plan.uploads, plan.upload_size) if figure == "small_uploads" else []
            halves: dict[str, list] = {target.name: [] for target in targets}
            for target, half in mirrored(targets, number):
                os.sync()
                if figure in paths:
                    path, headers = paths[figure]
                    seconds = max(1, round((plan.warmup_duration if warm else plan.duration) / 2))  # wrk: whole s
                    part = run_wrk(target.port, path, seconds, headers)
                elif figure == "tag_put":
                    tags = [f"{run_id}-{number}-{half}-{index}" for index in range(plan.tag_puts // 2)]
                    part = tag_puts(target.port, TAG_PUT_REPO, image.manifest, tags)
                else:
                    share = uploads[half::2]
                    part = small_uploads(target.port, UPLOADS_REPO, share, plan.upload_threads)
                halves[target.name].append(part)
            for target in alternate(targets, number):
                result = combine(figure, halves[target.name])
                results.add(target.name, figure, number, result)
                progress(f"  {figure:<16} {target.name:<9} {describe(result)}")
    return results


def wrk_result(result) -> dict:
    return result.as_dict() | {"per_s": result.requests_per_s, "p50_ms": result.p50_ms, "p99_ms": result.p99_ms}


def describe(result: dict) -> str:
    text = f"{result['per_s']:.0f}/s"
    if "p99_ms" in result:
        text += f", p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms"
    if result.get("errors"):
        text += f", {result['errors']} errors"
        if result.get("first_error"):
            text += f" (first: {result['first_error'][:200]})"
    return text


# --- The table ----------------------------------------------------------------------------------------------


STABILITY = 0.10  # a request-rate goal holds when the median meets it and the worst round is within 10% of it
# (issue 18: "a goal counts as met when the median meets it and the minimum is within 10% of it"): for ">= 4x",
# the median at least 4x and no round under 3.6x; for "<= 0.25x", no round over 0.275x


@dataclass(frozen=True)
class Check:
    """A goal on the ratio (dockyard / reference) or on Dockyard's own value: at least or at most `threshold`."""

    threshold: float
    judges: str  # "ratio" or "value"
    higher_is_better: bool

    def __call__(self, value: float | None, ratio_: float | None) -> bool:
        judged = ratio_ if self.judges == "ratio" else value
        if judged is None:
            return False
        return judged >= self.threshold if self.higher_is_better else judged <= self.threshold


@dataclass(frozen=True)
class Rounds:
    """The per-round values behind a row, both registries measured back to back in each round."""

    dockyard: tuple[float, ...]
    reference: tuple[float, ...] = ()

    @property
    def ratios(self) -> tuple[float, ...]:
        """Per-round ratios, when both sides have one value per round."""
        if len(self.dockyard) != len(self.reference):
            return ()
        return tuple(d / r for d, r in zip(self.dockyard, self.reference) if r)


@dataclass(frozen=True)
class Row:
    label: str
    unit: str
    dockyard: float | None
    reference: float | None
    goal: str = ""  # how it reads in the table
    check: Callable[[float | None, float | None], bool] | None = None  # (dockyard value, ratio) -> met?
    rounds: Rounds | None = None  # per-round values: shown as min-max; the ratio is then the median of per-round ratios
    stable: bool = False  # judge by the median-and-worst-round rule (STABILITY)
    show_ratio: bool = True

    @property
    def ratio(self) -> float | None:
        if not self.show_ratio:
            return None
        if self.rounds is not None and self.rounds.ratios:
            return median(list(self.rounds.ratios))
        return ratio(self.dockyard, self.reference)

    def judged_rounds(self) -> tuple[float, ...]:
        """What the goal judges, round by round (ratios or Dockyard's values)."""
        if self.rounds is None or not isinstance(self.check, Check):
            return ()
        return self.rounds.ratios if self.check.judges == "ratio" else self.rounds.dockyard

    @property
    def met(self) -> str:
        if self.check is None:
            return ""
        if self.dockyard is None:
            return "-"
        if not self.check(self.dockyard, self.ratio):
            return "NO"
        judged = self.judged_rounds()
        if self.stable and judged:
            goal = self.check.threshold
            if self.check.higher_is_better and min(judged) < goal * (1 - STABILITY):
                return "NO (unstable)"
            if not self.check.higher_is_better and max(judged) > goal * (1 + STABILITY):
                return "NO (unstable)"
        return "yes"


def at_least(times: float) -> tuple[str, Check]:
    return f">= {times:g}x", Check(times, "ratio", True)


def at_most(times: float) -> tuple[str, Check]:
    return f"<= {times:g}x", Check(times, "ratio", False)


def value_at_least(threshold: float, unit: str) -> tuple[str, Check]:
    return f">= {threshold:g}{unit}", Check(threshold, "value", True)


def value_at_most(threshold: float, unit: str) -> tuple[str, Check]:
    return f"<= {threshold:g}{unit}", Check(threshold, "value", False)


def spread(values: tuple[float, ...]) -> str:
    """min-max of a row's rounds, as the table shows it."""
    if len(values) < 2:
        return ""
    return f"{cell(min(values))}-{cell(max(values))}"


def table_rows(blob_results: list | None, rates: RateResults | None, plan: Plan, figures: list[str]) -> list[Row]:
    rows = []
    size = format_size(plan.blob_size)
    if blob_results:
        by_name = {r.target.name: r for r in blob_results}
        machine = blobs.round_limits(blob_results)

        def blob_rounds(figure: str) -> Rounds:
            return Rounds(*(tuple(m.mb_per_s for m in by_name[n].rounds[figure]) for n in REGISTRIES))

        labels = {"push_monolithic": (f"{size} push, monolithic", at_least(3)),
                  "push_chunked": (f"{size} push, {format_size(plan.chunk)} PATCH chunks", at_least(3)),
                  "pull": (f"{size} pull, direct, first after the push", at_least(1)),
                  "pull_again": (f"{size} pull, direct, again", at_least(1)),
                  "pull_proxy": (f"{size} pull, through nginx", at_least(1))}
        for figure, (label, (goal, check)) in labels.items():
            measured_with_pull = figure in ("pull_proxy", "pull_again")
            if figure in by_name["dockyard"].rounds and (figure in figures or measured_with_pull):
                values = blob_rounds(figure)
                rows.append(Row(label, "MB/s", median(list(values.dockyard)), median(list(values.reference)), goal,
                                check, values))
                if machine is not None and figure in blobs.PUSH_FIGURES:
                    name, lowest = machine.lowest
                    percent = Rounds(tuple(100 * v / lowest for v in values.dockyard),
                                     tuple(100 * v / lowest for v in values.reference))
                    rows.append(Row(f"  % of the lowest limit ({name}, {lowest:.0f} MB/s)", "%",
                                    median(list(percent.dockyard)), median(list(percent.reference)),
                                    *value_at_least(60, "%"), percent, show_ratio=False))
    if rates:
        labels = {
            "manifest_tag": "manifest GET by tag",
            "manifest_digest": "manifest GET by digest",
            "tag_put": "tag PUT, sequential",
            "tags_list": f"tags/list, {plan.tag_count:,} tags",
            "tags_page": "tags/list?n=100 (reference: ignores n)",
            "catalog": f"_catalog?n=100, {plan.repository_count:,} repos",
            "small_uploads": f"{plan.uploads:,} x {format_size(plan.upload_size)} uploads, {plan.upload_threads} thr",
        }
        goals = {"manifest_tag": at_least(4), "manifest_digest": at_least(4), "tag_put": at_least(3),
                 "tags_list": at_least(5), "tags_page": at_least(20), "catalog": at_least(20),
                 "small_uploads": at_least(2)}
        p99_goals = {"manifest_tag": at_most(0.25), "manifest_digest": at_most(0.25)}
        units = {"tag_put": "PUT/s", "small_uploads": "uploads/s"}
        for figure, label in labels.items():
            if figure not in figures:
                continue
            values = rates.paired(figure, "per_s")
            rows.append(Row(label, units.get(figure, "req/s"), median(list(values.dockyard)),
                            median(list(values.reference)), *goals[figure], values, stable=True))
            if figure != "small_uploads":
                p99 = rates.paired(figure, "p99_ms")
                rows.append(Row(f"  {label}, p99", "ms", median(list(p99.dockyard)), median(list(p99.reference)),
                                *p99_goals.get(figure, ("", None)), p99, stable=True))
            errors = [rates.total(n, figure, "errors") for n in REGISTRIES]
            if figure == "small_uploads" or any(errors):
                rows.append(Row(f"  {label}, errors", "count", *errors, "0", lambda value, r: value == 0))
    if blob_results and "memory" in figures:
        by_name = {r.target.name: r for r in blob_results}

        def worst(name: str, attribute: str) -> float | None:
            peaks = [by_name[name].peak(f, attribute) for f in ("push_monolithic", "push_chunked")]
            return None if None in peaks else max(peaks) / (1 << 20)

        rows.append(Row(f"peak RSS per process, {size} push", "MiB", worst("dockyard", "peak_process"),
                        worst("reference", "peak_process"), *value_at_most(80, " MiB")))
        rows.append(Row("  the same process before the push", "MiB", worst("dockyard", "first_process"),
                        worst("reference", "first_process")))
    return rows


def format_table(rows: list[Row]) -> str:
    width = max(len(row.label) for row in rows)
    header = (f"{'figure':<{width}}  {'unit':<9}{'dockyard':>9} {'(min-max)':<12}{'reference':>9} {'(min-max)':<12}"
              f"{'ratio':>6} {'(min-max)':<12}{'goal':<11}met")
    lines = [header, "-" * len(header)]
    for row in rows:
        show = (lambda v: "-" if v is None else f"{v:.0f}") if row.unit == "count" else cell
        rounds = row.rounds or Rounds(())
        ratios = rounds.ratios if row.show_ratio else ()
        lines.append(
            f"{row.label:<{width}}  {row.unit:<9}{show(row.dockyard):>9} {spread(rounds.dockyard):<12}"
            f"{show(row.reference):>9} {spread(rounds.reference):<12}{cell(row.ratio):>6} {spread(ratios):<12}"
            f"{row.goal:<11}{row.met}".rstrip()
        )
    return "\n".join(lines)


# --- The run ------------------------------------------------------------------------------------------------


def selected(args: argparse.Namespace) -> list[str]:
    if not args.only:
        return list(ALL_FIGURES)
    chosen = set()
    for name in args.only.split(","):
        name = name.strip()
        if name == "blobs":
            chosen |= {*BLOB_FIGURES, "memory"}
        elif name in ALL_FIGURES:
            chosen.add(name)
        else:
            raise BenchError(f"--only: no figure {name!r}; choose from blobs, {', '.join(ALL_FIGURES)}")
    if chosen & {"pull_nginx", "memory"}:
        chosen |= set(BLOB_FIGURES)  # they need the pushed blobs (and are measured with them)
    return [f for f in ALL_FIGURES if f in chosen]


def run(args: argparse.Namespace) -> int:
    figures = selected(args)
    plan = make_plan(args)
    started_at = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    load_start = load_average()
    rate_figures = [f for f in figures if f in WRK_FIGURES or f in ("tag_put", "small_uploads")]
    if any(f in WRK_FIGURES for f in figures):
        wrk_binary()
    blob_results = rates = None
    notes: dict[str, str] = {}
    commands: dict[str, list[str]] = {}
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dockyard-bench-")))
        if BLOB_FIGURES[0] in figures:
            blobs.check_disk(workdir, plan.blob_size, plan.rounds, 2)
        targets = []
        for name in REGISTRIES:
            (workdir / name).mkdir()
            progress(f"starting {name}")
            server = dockyard(workdir / name, args.dockyard_cmd) if name == "dockyard" else reference_registry(
                workdir / name)
            targets.append(stack.enter_context(server))
            commands[name] = targets[-1].command
        proxies = None
        if "pull_nginx" in figures:
            (workdir / "dockyard-accel").mkdir()
            progress("starting dockyard with accel_redirect (the same data directory), for nginx")
            accel = stack.enter_context(dockyard(
                workdir / "dockyard-accel", args.dockyard_cmd, name="dockyard-accel", data=workdir / "dockyard" / "data",
                settings={"accel_redirect": accel_prefix(), "trusted_proxies": "127.0.0.1"}))
            commands["dockyard behind nginx"] = accel.command
            front = stack.enter_context(nginx(workdir, accel.port, workdir / "dockyard" / "data", targets[1].port))
            proxies = {"dockyard": front.ports["dockyard"], "reference": front.ports["reference"]}
            notes["pull_nginx"] = (f"pull through nginx: Dockyard with X-Accel-Redirect, nginx site from "
                                   f"{front.dockyard_site}; the reference through the same nginx as a plain proxy")
        image = None
        if rate_figures:
            for target in targets:
                progress(f"seeding {target.name}")
                seeding_started = time.perf_counter()
                seeded = seed(target.port, plan, set(figures))
                progress(f"  {len(seeded.tags):,} tags in {TAGS_REPO}, {len(seeded.repositories):,} more repositories, "
                         f"in {time.perf_counter() - seeding_started:.1f} s")
                notes |= check_answers(target.port, target.name, seeded, set(figures))
                image = seeded.image
        if BLOB_FIGURES[0] in figures:
            progress(f"writing the {format_size(plan.blob_size)} payload")
            payload = stack.enter_context(blobs.payload_file(workdir / "payload", plan.blob_size))
            blob_results = blobs.run_rounds(targets, payload, plan.rounds, plan.chunk, proxies, limits_in=workdir)
        if rate_figures:
            rates = rate_rounds(targets, plan, rate_figures, image)
        load_end = load_average()
        # Printed before the teardown: removing the reference's directory tree can take minutes on a busy disk.
        report(args, plan, figures, started_at, (load_start, load_end), blob_results, rates, notes, commands)
        progress("stopping the servers and removing their data (the reference's many small files take a while)")
    return 0


def report(args: argparse.Namespace, plan: Plan, figures: list[str], started_at: str, load: tuple[float, float],
           blob_results: list | None, rates: RateResults | None, notes: dict[str, str],
           commands: dict[str, list[str]]) -> None:
    rows = table_rows(blob_results, rates, plan, figures)
    print()
    print(f"python bench/run.py {' '.join(sys.argv[1:])}".rstrip() + f"    ({started_at})")
    print(f"nproc {nproc()}; load average (1 min) {load[0]:.2f} at start, {load[1]:.2f} at end")
    print(f"median (min-max) of {plan.rounds} blob round(s) and {plan.rate_rounds} request-rate round(s), each after "
          f"1 discarded warm-up; blob rounds alternate the registries, a request-rate round measures each registry "
          f"twice in mirrored order (A B B A), half the work each time; wrk {WRK_THREADS} threads {WRK_CONNECTIONS} "
          f"connections, 2 x {max(1, round(plan.duration / 2))} s; 1 MB = 10^6 bytes; ratio = median of the "
          "per-round dockyard / reference; a request-rate goal is met when the median meets it and the worst round "
          f"is within {STABILITY:.0%} of it\n")
    print(format_table(rows))
    if blob_results and (machine := blobs.round_limits(blob_results)):
        print(f"\nmachine, median of {len(blob_results[0].limits)} blob round(s): {limits.describe(machine)}; "
              f"lowest: {machine.lowest[0]}")
    for note in notes.values():
        print(f"note: {note}")
    if args.json:
        document = {
            "started_at": started_at, "argv": sys.argv[1:], "nproc": nproc(),
            "loadavg_1min": {"start": load[0], "end": load[1]}, "plan": plan.__dict__, "commands": commands,
            "notes": notes,
            "table": [{"figure": r.label.strip(), "unit": r.unit, "dockyard": r.dockyard, "reference": r.reference,
                       "ratio": r.ratio, "goal": r.goal, "met": r.met} for r in rows],
            "blobs": {r.target.name: blobs.figures_json(r) for r in blob_results or []},
            "limits_median_mb_per_s": (m.as_dict() if blob_results and (m := blobs.round_limits(blob_results))
                                       else None),
            "rates": {"rounds": rates.rounds, "warmup": rates.warmup} if rates else None,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        print(f"\nresults written to {args.json}")
    sys.stdout.flush()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="reduced run: 128 MiB blobs, 1 blob round, 3 rate rounds of 4 s wrk, fewer PUTs and uploads")
    parser.add_argument("--only", help=f"comma-separated figures: blobs, {', '.join(ALL_FIGURES)}")
    parser.add_argument("--rounds", type=int, help="timed blob rounds after one warm-up (default 3, --quick 1)")
    parser.add_argument("--rate-rounds", type=int,
                        help="timed request-rate rounds after one warm-up (default 5, --quick 3)")
    parser.add_argument("--duration", type=float,
                        help="seconds of wrk per figure, registry and round, in two halves (default 10, --quick 4)")
    parser.add_argument("--size", type=parse_size, help="blob size (default 1GiB, --quick 128MiB)")
    parser.add_argument("--chunk", type=parse_size, default="8MiB", help="PATCH size of the chunked push")
    parser.add_argument("--dockyard-cmd", default=DOCKYARD_CMD,
                        help=f"command that serves Dockyard; {{port}} and {{data}} are filled in "
                             f"(default: {DOCKYARD_CMD!r})")
    parser.add_argument("--json", type=Path, help="also write every figure and round as JSON to this file")
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.rate_rounds is not None and args.rate_rounds < 1:
        parser.error("--rate-rounds must be at least 1")
    if args.duration is not None and args.duration < 1:
        parser.error("--duration must be at least 1 second")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return main_guard(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
