"""Many clients at once: Dockyard and the reference registry side by side, both behind the deploy/ nginx site.

    python bench/concurrency.py [--quick] [--levels 10,50,50/50,200,200] [--seconds 20] [--rounds 3]
                                [--processes 2] [--json PATH]

Starts Dockyard as deployed (`dockyard serve`, default workers, `accel_redirect` and 127.0.0.1 as trusted proxy)
behind nginx with the deploy/nginx/dockyard.conf site, and the reference registry behind the same nginx as a plain
unbuffered proxy with the same settings (bench/nginx_front.py), plus a third nginx server block that serves the
same bytes as static files (the ceiling). Pushes the same 5-layer image to both registries and writes its files
for the ceiling. Then, for each level (N, M, K): N slow pushers (each ~1 MiB/s), M pullers of the image, K manifest
readers (bench/loadgen.py), for `--seconds` against each target in turn, the order rotating every round, after one
short warm-up round (discarded). Reported per class: throughput, p50/p99 latency, errors; per target: the
registry's worker RSS, CPU of the registry and of nginx, nginx's open files; and the load generator's own CPU and
the machine's, so that a saturated generator (or machine) shows. See bench/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

import loadgen
from harness import (RssSampler, Target, cpu_seconds, dockyard, format_size, load_average, main_guard, nproc,
                     parse_size, process_tree, progress, reference_registry)
from nginx_front import accel_prefix, nginx
from rates import percentile
from seed import DOCKER_ACCEPT, Connection, Image, image_config

TARGETS = ["dockyard", "reference", "ceiling"]
REGISTRIES = TARGETS[:2]
IMAGE_REPO = "bench/image"
PUSH_REPO = "bench/push"
TAG = "latest"
LAYER_SIZES = (4 << 20, 2 << 20, 1 << 20, 768 << 10, 256 << 10)
LEVELS = ((10, 50, 50), (50, 200, 200))
PUSH_RATE = 1 << 20  # bytes per second per slow pusher


def parse_levels(text: str) -> tuple[tuple[int, int, int], ...]:
    """'10,50,50/50,200,200' -> ((10, 50, 50), (50, 200, 200))."""
    levels = []
    for part in text.split("/"):
        numbers = part.split(",")
        if len(numbers) != 3 or not all(n.strip().isdigit() for n in numbers):
            raise argparse.ArgumentTypeError(f"a level is N,M,K (pushers, pullers, readers), not {part!r}")
        levels.append(tuple(int(n) for n in numbers))
    return tuple(levels)


# --- What each run measured, and the table ------------------------------------------------------------------


@dataclass
class Sample:
    """One run of one level against one target."""

    target: str
    seconds: float
    classes: dict[str, dict]  # class -> operations, bytes, errors, messages, p50_ms, p99_ms
    generator_cpu: float  # cores (CPU seconds / window)
    machine_busy: float  # fraction of all CPUs busy during the window
    server_cpu: float  # cores used by the registry's processes (for the ceiling: 0)
    nginx_cpu: float
    rss_largest_mib: float | None
    rss_all_mib: float | None
    nginx_files: int  # most descriptors open in one nginx worker at once
    nginx_sockets: int = 0  # of them, sockets (client and upstream connections)
    nginx_regular_files: int = 0  # and files on disk


def class_summary(result: loadgen.ClassResult, seconds: float) -> dict:
    latencies = result.latencies_ms
    return {
        "operations": result.operations,
        "per_s": result.operations / seconds,
        "mb_per_s": result.bytes / seconds / 1e6,
        "errors": result.errors,
        "messages": result.messages,
        "p50_ms": statistics.median(latencies) if latencies else None,
        "p99_ms": percentile(latencies, 99) if latencies else None,
    }


def med(samples: list[Sample], pick) -> float | None:
    values = [v for v in (pick(s) for s in samples) if v is not None]
    return statistics.median(values) if values else None


@dataclass(frozen=True)
class Line:
    label: str
    unit: str
    values: dict[str, float | None]  # by target
    goal: str = ""
    met: str = ""
    ratio: float | None = None


def level_lines(by_target: dict[str, list[Sample]]) -> list[Line]:
    """The table of one level: medians over rounds per target, the goals judged on Dockyard against the reference."""

    def values(pick) -> dict[str, float | None]:
        return {t: med(by_target[t], pick) if by_target.get(t) else None for t in TARGETS}

    def of(name: str, key: str):
        return lambda s: s.classes[name][key]

    def ratio(v: dict) -> float | None:
        return v["dockyard"] / v["reference"] if v["dockyard"] is not None and v["reference"] else None

    lines = []
    pushed = values(of("pushers", "mb_per_s"))
    lines.append(Line("pushers: throughput", "MB/s", pushed, ratio=ratio(pushed)))
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99")):
        v = values(of("pushers", key))
        lines.append(Line(f"  push {label} (POST to 201)", "ms", v, ratio=ratio(v)))
    pulled = values(of("pullers", "mb_per_s"))
    lines.append(Line("pullers: throughput", "MB/s", pulled, ">= 1x", verdict(ratio(pulled), at_least=1.0),
                      ratio(pulled)))
    images = values(of("pullers", "per_s"))
    lines.append(Line("  images pulled", "/s", images, ratio=ratio(images)))
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99")):
        v = values(of("pullers", key))
        lines.append(Line(f"  image {label}", "ms", v, ratio=ratio(v)))
    served = values(of("readers", "per_s"))
    lines.append(Line("readers: manifests", "req/s", served, ratio=ratio(served)))
    p50 = values(of("readers", "p50_ms"))
    lines.append(Line("  manifest p50", "ms", p50, ratio=ratio(p50)))
    p99 = values(of("readers", "p99_ms"))
    lines.append(Line("  manifest p99", "ms", p99, "<= 1x", verdict(ratio(p99), at_most=1.0), ratio(p99)))
    errors = {t: (sum(s.classes[c]["errors"] for s in by_target[t] for c in loadgen.CLASSES)
                  if by_target.get(t) else None) for t in TARGETS}
    lines.append(Line("errors, all classes, all rounds", "count", errors, "0",
                      verdict(errors["dockyard"], exactly=0)))
    lines.append(Line("worker RSS, largest process", "MiB", values(lambda s: s.rss_largest_mib)))
    lines.append(Line("  all processes", "MiB", values(lambda s: s.rss_all_mib)))
    lines.append(Line("registry CPU", "cores", values(lambda s: s.server_cpu)))
    lines.append(Line("nginx CPU", "cores", values(lambda s: s.nginx_cpu)))
    lines.append(Line("nginx worker, most descriptors open", "count", values(lambda s: s.nginx_files)))
    lines.append(Line("  of them sockets", "count", values(lambda s: s.nginx_sockets)))
    lines.append(Line("  and files", "count", values(lambda s: s.nginx_regular_files)))
    lines.append(Line("load generator CPU", "cores", values(lambda s: s.generator_cpu)))
    lines.append(Line("machine CPU busy", "%", values(lambda s: 100 * s.machine_busy)))
    return lines


def verdict(value: float | None, *, at_least: float | None = None, at_most: float | None = None,
            exactly: float | None = None) -> str:
    if value is None:
        return "-"
    if at_least is not None:
        return "yes" if value >= at_least else "NO"
    if at_most is not None:
        return "yes" if value <= at_most else "NO"
    return "yes" if value == exactly else "NO"


def cell(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("count",):
        return f"{value:.0f}"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.0f}"


def format_level(level: tuple[int, int, int], lines: list[Line]) -> str:
    width = max(len(line.label) for line in lines)
    header = (f"{'(N, M, K) = ' + str(level):<{width}}  {'unit':<7}{'dockyard':>10}{'reference':>11}{'ratio':>8}"
              f"{'ceiling':>10}  {'goal':<7}met")
    out = [header, "-" * len(header)]
    for line in lines:
        out.append(f"{line.label:<{width}}  {line.unit:<7}{cell(line.values['dockyard'], line.unit):>10}"
                   f"{cell(line.values['reference'], line.unit):>11}{cell(line.ratio, ''):>8}"
                   f"{cell(line.values['ceiling'], line.unit):>10}  {line.goal:<7}{line.met}".rstrip())
    return "\n".join(out)


# --- Watching the processes during a run --------------------------------------------------------------------



def machine_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


class FileSampler:
    """What nginx's busiest worker held open at once, sampled every 100 ms: all descriptors, and of them the
    sockets (client and upstream connections) and the files (blobs sent for X-Accel-Redirect, static files)."""

    def __init__(self, root: int):
        self.root = root
        self.most = 0
        self.sockets = 0
        self.files = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="fd-sampler")

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        workers = [pid for pid in process_tree(self.root) if pid != self.root]
        while not self._stop.wait(0.1):
            for pid in workers:
                try:
                    targets = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
                except OSError:
                    continue
                if len(targets) > self.most:
                    self.most = len(targets)
                    self.sockets = sum(t.startswith("socket:") for t in targets)
                    self.files = sum(t.startswith("/") and not t.startswith("/dev/") for t in targets)


# --- Set-up -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seeded:
    image: Image
    blobs: tuple[tuple[str, int], ...]  # config and layers, in pull order
    contents: dict[str, bytes] = field(repr=False)  # digest -> bytes, for the static files


def make_image(sizes: tuple[int, ...]) -> tuple[bytes, list[bytes]]:
    config = image_config("concurrency")
    layers = []
    for index, size in enumerate(sizes):
        block = hashlib.sha256(b"layer %d" % index).digest()
        random = os.urandom(1 << 16)
        layers.append((block + random * (size // len(random) + 1))[:size])
    return config, layers


def seed(targets: list[Target], sizes: tuple[int, ...]) -> Seeded:
    config, layers = make_image(sizes)
    image = None
    for target in targets:
        conn = Connection(target.port)
        try:
            image = conn.push_image(IMAGE_REPO, config, layers, TAG)
            conn.expect("GET", f"/v2/{IMAGE_REPO}/manifests/{TAG}", 200, headers={"Accept": DOCKER_ACCEPT})
        finally:
            conn.close()
    document = json.loads(image.manifest)
    blobs = tuple((d["digest"], d["size"]) for d in [document["config"], *document["layers"]])
    contents = {f"sha256:{hashlib.sha256(b).hexdigest()}": b for b in [config, *layers]}
    return Seeded(image, blobs, contents)


def write_static(root: Path, seeded: Seeded) -> None:
    """The same bytes at the same paths, for nginx to serve as files (the ceiling)."""
    (root / "v2").mkdir(parents=True)
    (root / "v2" / "index.html").write_text("{}")
    manifests = root / "v2" / IMAGE_REPO / "manifests"
    manifests.mkdir(parents=True)
    (manifests / TAG).write_bytes(seeded.image.manifest)
    (manifests / seeded.image.digest).write_bytes(seeded.image.manifest)
    blobs = root / "v2" / IMAGE_REPO / "blobs"
    blobs.mkdir(parents=True)
    for digest, data in seeded.contents.items():
        (blobs / digest).write_bytes(data)


def workload(port: int, seeded: Seeded, level: tuple[int, int, int], seconds: float, push_size: int,
             static: bool) -> loadgen.Workload:
    pushers, pullers, readers = level
    return loadgen.Workload(port=port, repository=IMAGE_REPO, tag=TAG, digest=seeded.image.digest,
                            blobs=seeded.blobs, push_repository=PUSH_REPO, pushers=pushers, pullers=pullers,
                            readers=readers, push_size=push_size, push_rate=PUSH_RATE, seconds=seconds,
                            static=static)


class WindowCpu:
    """CPU used within the measurement window (from wall-clock `start_at`, `seconds` long): by each process tree
    in `roots` and by the whole machine. A thread samples at both ends."""

    def __init__(self, roots: dict[str, int], start_at: float, seconds: float):
        self.roots = roots
        self.start_at = start_at
        self.seconds = seconds
        self.cores: dict[str, float] = {}
        self.machine_busy = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True, name="window-cpu")

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._thread.join()

    def _sample(self) -> tuple[dict[str, float], tuple[int, int]]:
        return {name: cpu_seconds(pid) for name, pid in self.roots.items()}, machine_times()

    def _run(self) -> None:
        time.sleep(max(0.0, self.start_at - time.time()))
        began, machine_began = self._sample()
        time.sleep(self.seconds)
        ended, machine_ended = self._sample()
        self.cores = {name: (ended[name] - began[name]) / self.seconds for name in self.roots}
        self.machine_busy = (machine_ended[0] - machine_began[0]) / max(1, machine_ended[1] - machine_began[1])


def measure(name: str, port: int, server_pid: int | None, nginx_pid: int, work: loadgen.Workload,
            processes: int) -> Sample:
    os.sync()
    start_at = loadgen.start_time(work)
    sampler = RssSampler(server_pid) if server_pid else None
    roots = {"nginx": nginx_pid} | ({"server": server_pid} if server_pid else {})
    with ExitStack() as watching:
        if sampler:
            watching.enter_context(sampler)
        files = watching.enter_context(FileSampler(nginx_pid))
        window = watching.enter_context(WindowCpu(roots, start_at, work.seconds))
        result = loadgen.run(work, processes, start_at)
    return Sample(
        target=name, seconds=result.seconds,
        classes={c: class_summary(result.classes[c], result.seconds) for c in loadgen.CLASSES},
        generator_cpu=result.cpu_seconds / result.seconds, machine_busy=window.machine_busy,
        server_cpu=window.cores.get("server", 0.0), nginx_cpu=window.cores["nginx"],
        rss_largest_mib=sampler.peak_process / (1 << 20) if sampler else None,
        rss_all_mib=sampler.peak_total / (1 << 20) if sampler else None,
        nginx_files=files.most, nginx_sockets=files.sockets, nginx_regular_files=files.files)


def describe(sample: Sample) -> str:
    c = sample.classes
    errors = sum(c[k]["errors"] for k in loadgen.CLASSES)
    text = (f"push {c['pushers']['mb_per_s']:.1f} MB/s, pull {c['pullers']['mb_per_s']:.0f} MB/s "
            f"(p99 {c['pullers']['p99_ms'] or 0:.0f} ms), manifests {c['readers']['per_s']:.0f}/s "
            f"(p99 {c['readers']['p99_ms'] or 0:.1f} ms), errors {errors}, generator {sample.generator_cpu:.2f} "
            f"cores, machine {100 * sample.machine_busy:.0f}% busy")
    if errors:
        first = next(m for k in loadgen.CLASSES for m in c[k]["messages"])
        text += f" (first: {first})"
    return text


def rotate(items: list, number: int) -> list:
    """Each round starts with the next target: none always goes first (or last)."""
    shift = number % len(items)
    return items[shift:] + items[:shift]


# --- The run ------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    started_at = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    load_start = load_average()
    files = loadgen.raise_file_limit()
    results: dict[str, dict[str, list[Sample]]] = {}
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dockyard-concurrency-")))
        progress("starting dockyard (accel_redirect, behind nginx) and the reference")
        (workdir / "dockyard").mkdir()
        (workdir / "reference").mkdir()
        registry = stack.enter_context(dockyard(
            workdir / "dockyard", args.dockyard_cmd, settings={"accel_redirect": accel_prefix(),
                                                               "trusted_proxies": "127.0.0.1"}))
        reference = stack.enter_context(reference_registry(workdir / "reference"))
        progress("pushing the 5-layer image to both")
        seeded = seed([registry, reference], args.layers)
        write_static(workdir / "static", seeded)
        front = stack.enter_context(nginx(workdir, registry.port, workdir / "dockyard" / "data", reference.port,
                                          ceiling_root=workdir / "static"))
        pids = {"dockyard": registry.pid, "reference": reference.pid, "ceiling": None}
        for level in args.levels:
            key = ",".join(map(str, level))
            results[key] = {t: [] for t in TARGETS}
            for number in range(args.rounds + 1):
                warm = number == 0
                seconds = args.warmup if warm else args.seconds
                progress(f"(N, M, K) = {level}: " + ("warm-up round (discarded)" if warm
                                                     else f"round {number}/{args.rounds}"))
                for name in rotate(TARGETS, number):
                    work = workload(front.ports[name], seeded, level, seconds, args.push_size, name == "ceiling")
                    sample = measure(name, front.ports[name], pids[name], front.pid, work, args.processes)
                    progress(f"  {name:<9} {describe(sample)}")
                    if not warm:
                        results[key][name].append(sample)
        load_end = load_average()
        report(args, started_at, (load_start, load_end), files, results, front.dockyard_site)
        progress("stopping the servers and removing their data")
    return 0


def report(args, started_at: str, load: tuple[float, float], files: int, results: dict, site: str) -> None:
    print()
    print(f"python bench/concurrency.py {' '.join(sys.argv[1:])}".rstrip() + f"    ({started_at})")
    print(f"nproc {nproc()}; load average (1 min) {load[0]:.2f} at start, {load[1]:.2f} at end; "
          f"load generator: {args.processes} processes, open-file limit {files}")
    print(f"median of {args.rounds} round(s) of {args.seconds:g} s after 1 discarded warm-up, the order of the "
          f"targets rotating; pushers {format_size(args.push_size)} blobs at {format_size(PUSH_RATE)}/s each; "
          f"image: {len(args.layers)} layers, {format_size(sum(args.layers))} + config; ratio = dockyard / "
          f"reference; ceiling = nginx serving the same bytes as static files")
    print(f"Dockyard's nginx site: {site} (X-Accel-Redirect); the reference: a plain unbuffered proxy\n")
    verdicts = []
    for key, by_target in results.items():
        level = tuple(int(n) for n in key.split(","))
        lines = level_lines(by_target)
        print(format_level(level, lines))
        print()
        verdicts += [line.met for line in lines if line.met]
        for name in TARGETS:
            messages = [m for s in by_target[name] for c in loadgen.CLASSES for m in s.classes[c]["messages"]]
            if messages:
                print(f"  {name}: first errors: {messages[:3]}")
    print(f"goals met: {verdicts.count('yes')} of {len(verdicts)}")
    if args.json:
        document = {"started_at": started_at, "argv": sys.argv[1:], "nproc": nproc(),
                    "loadavg_1min": {"start": load[0], "end": load[1]},
                    "levels": {key: {t: [asdict(s) for s in samples] for t, samples in by_target.items()}
                               for key, by_target in results.items()}}
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        print(f"results written to {args.json}")
    sys.stdout.flush()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 8 s per target and level")
    parser.add_argument("--levels", type=parse_levels, default=LEVELS,
                        help="N,M,K (pushers, pullers, manifest readers) levels, separated by / "
                             "(default 10,50,50/50,200,200)")
    parser.add_argument("--seconds", type=float, help="seconds per measurement (default 20, --quick 8)")
    parser.add_argument("--rounds", type=int, help="timed rounds after one warm-up (default 3, --quick 1)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of the discarded warm-up round")
    parser.add_argument("--processes", type=int, default=2, help="load generator processes (default 2)")
    parser.add_argument("--push-size", type=parse_size, default="2MiB", help="size of each slow push")
    parser.add_argument("--layers", type=lambda t: tuple(parse_size(p) for p in t.split(",")),
                        default=LAYER_SIZES, help="layer sizes of the pulled image, comma-separated")
    parser.add_argument("--dockyard-cmd", default="dockyard serve --bind 127.0.0.1:{port} --data {data}",
                        help="command that serves Dockyard; {port} and {data} are filled in")
    parser.add_argument("--json", type=Path, help="also write every round as JSON to this file")
    args = parser.parse_args(argv)
    args.seconds = args.seconds or (8.0 if args.quick else 20.0)
    args.rounds = args.rounds or (1 if args.quick else 3)
    if args.rounds < 1 or args.seconds < 1 or args.processes < 1:
        parser.error("--rounds, --seconds and --processes must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return main_guard(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
