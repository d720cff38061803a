"""`tune-adapter bench --data`: does training read a pack larger than memory at disk speed?

A synthetic pack of InfiniteTalk's audio rows (L=12, C=768, bf16 as packs store them) with
a tiny teacher's targets (K=4, D=16) and a tiny adapter, so an epoch's work is reading and
gathering audio rather than arithmetic. Measured, each trial in its own process:
- the disk's sequential read bandwidth, by direct I/O (O_DIRECT, past the page cache) of
  the pack's shard files;
- the epoch of 1 trial and of 2 concurrent trials (started together), from a cold page
  cache, inside a memory cgroup (v1) capped at a third of the pack: the pack cannot stay
  in memory, as on a machine whose RAM is smaller than its data;
- in each trial's epoch, from its own counters: CPU time, time waiting for a core
  (schedstat), the rest waiting for reads; major page faults; bytes read from storage;
- each trial's peak RSS (`wait4`) and own memory (peak RssAnon), the latter also on a
  small pack (the most trials at once, each without the kept heap, as a search runs
  them): a mapped pack must not grow a trial's own memory.

The pack is written with pack.py's own writer (`pack_manifests`), its clips made here
instead of read from files, and removed afterwards.
"""

from __future__ import annotations

import errno
import json
import math
import mmap
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

GB = 10**9
MB = 2**20
AUDIO_SHAPE = (12, 768)  # InfiniteTalk's wav2vec2 rows: L layers, C channels
TARGET_SHAPE = (4, 16)  # K, D of a tiny teacher: targets are a rounding error next to audio
INTERMEDIATE_DIM = 8  # a tiny adapter: the step's arithmetic stays small next to its reading
EPOCH_FACTORS = {1: 1.5, 2: 2.0}  # target: an epoch <= factor x (pack bytes / bandwidth)
RSS_TOLERANCE = 0.10  # target: a trial's own memory within 10% on a small and a large pack
CGROUP_ROOT = Path("/sys/fs/cgroup/memory")
BLKIO_ROOT = Path("/sys/fs/cgroup/blkio")
DIRECT_BLOCK = 8 * MB
DIRECT_LIMIT = 2 * 2**30  # read at most this much for the bandwidth
MIN_CAP = 768 * MB  # a cgroup cap below a trial's own memory would only kill it


@dataclass(frozen=True)
class DataBenchSpec:
    size_gb: float = 4.0  # the large pack, decimal GB of shard files
    small_gb: float = 1.0  # the small pack of the RSS comparison
    trials: tuple[int, ...] = (1, 2)
    frames: int = 81  # per clip
    batch_size: int = 4
    val_clips: int = 4
    cap_fraction: float = 1 / 3  # the cgroup's memory cap, as a fraction of the pack
    shard_bytes: int | None = None  # None: packs' default
    threads: int = 1  # torch threads per trial: a search's default (--cpus-per-trial 1)
    shuffle_window: int | None = None  # None: the trainer's default
    drop_cache: bool = True  # drop the page cache before each measurement (root only)
    disk_mbps: float | None = None  # throttle the pack's disk to this (blkio), as a slower disk
    seed: int = 0

    def __post_init__(self):
        from ..errors import ConfigError

        if not self.size_gb > 0 or not self.small_gb > 0:
            raise ConfigError("--size must be > 0 (GB)")
        if not self.trials or any(t < 1 for t in self.trials):
            raise ConfigError("--trials must be >= 1")
        if self.disk_mbps is not None and not self.disk_mbps > 0:
            raise ConfigError("--disk-mbps must be > 0 (MB/s), or left out for the disk as it is")


# --- the synthetic pack ---------------------------------------------------------------

def clip_bytes(frames: int) -> int:
    return frames * (math.prod(AUDIO_SHAPE) * 2 + math.prod(TARGET_SHAPE) * 2)


def write_pack(folder: Path, gigabytes: float, spec: DataBenchSpec):
    """`folder/train` (about `gigabytes` GB of shards) and `folder/val` (a few clips), written
    by the packs' own builder with each clip made here: random rows from a pool, so making them
    costs a slice, not a random number per value. Returns the packs (TrainData)."""
    import torch

    from ..data import TrainData
    from ..data.manifest import ClipEntry
    from ..data.pack import PackBuilder, open_pack
    from ..data.shards import PACK_DTYPES, SHARD_BYTES

    folder = Path(folder)
    gen = torch.Generator().manual_seed(spec.seed)
    pool_frames = 4 * spec.frames
    audio_pool = torch.randn(pool_frames, *AUDIO_SHAPE, generator=gen).to(torch.bfloat16)
    target_pool = torch.randn(pool_frames, *TARGET_SHAPE, generator=gen)
    starts = torch.randint(0, pool_frames - spec.frames + 1, (1 << 16,), generator=gen).tolist()

    def build(split: str, count: int):
        builder = PackBuilder(folder / split, PACK_DTYPES["half"], spec.shard_bytes or SHARD_BYTES)
        for i in range(count):
            # Rows from a per-clip place in the pools; targets per frame, no two rows alike.
            at = starts[i % len(starts)]
            entry = ClipEntry(i, folder / f"{split}-{i}.audio", folder / f"{split}-{i}.target", 1.0,
                              f"{split}-{i}", folder / f"{split}.json")
            builder.add(entry, audio_pool[at:at + spec.frames], target_pool[at:at + spec.frames])
        builder.finish()
        return open_pack(folder / split, f"synthetic ({split})")

    clips = max(1, round(gigabytes * GB / clip_bytes(spec.frames)))
    train, val = build("train", clips), build("val", spec.val_clips)
    return TrainData(train=train, val=val)


def shard_files(pack) -> list[Path]:
    return [*pack.audio.files, *pack.targets.files]


# --- the disk ------------------------------------------------------------------------

@dataclass
class Bandwidth:
    mb_per_s: float
    bytes_read: int
    direct: bool  # False: O_DIRECT refused (tmpfs, ...), read through a dropped page cache


def sequential_read(files: list[Path], limit: int = DIRECT_LIMIT, block: int = DIRECT_BLOCK) -> Bandwidth:
    """MB/s of reading these files front to back with direct I/O into a page-aligned
    (mmap-allocated) buffer, up to `limit` bytes; where O_DIRECT is refused, buffered
    reads of files dropped from the page cache (posix_fadvise DONTNEED)."""
    buffer = mmap.mmap(-1, block)
    done, seconds, direct = 0, 0.0, True
    try:
        for path in files:
            if done >= limit:
                break
            try:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECT", 0))
            except OSError:
                direct = False
                fd = os.open(path, os.O_RDONLY)
            try:
                if not direct:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                offset = 0
                started = time.perf_counter()
                while done < limit:
                    try:
                        got = os.preadv(fd, [buffer], offset)
                    except OSError:
                        if not direct:
                            raise
                        direct = False  # e.g. EINVAL: the filesystem takes no direct reads here
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                        continue
                    if got <= 0:
                        break
                    offset += got
                    done += got
                    if got < block:
                        break
                seconds += time.perf_counter() - started
            finally:
                os.close(fd)
    finally:
        buffer.close()
    return Bandwidth(done / MB / seconds if seconds > 0 else math.nan, done, direct)


def drop_page_cache() -> bool:
    """Write back and drop the page cache (root only); False where not allowed."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


# --- the memory cgroup ---------------------------------------------------------------

@dataclass
class MemoryCgroup:
    path: Path | None  # None: none could be made; children run without a cap
    limit: int
    why_not: str = ""
    throttle: Path | None = None  # a blkio cgroup the children join too (disk_throttle)

    def enter(self) -> None:
        """Move the calling process into the cgroup (a child, between fork and exec)."""
        for path in (self.path, self.throttle):
            if path is not None:
                (path / "cgroup.procs").write_text(str(os.getpid()))

    def peak(self) -> int | None:
        """The cgroup's peak usage (page cache charged to it included), bytes."""
        if self.path is None:
            return None
        return int((self.path / "memory.max_usage_in_bytes").read_text())


@contextmanager
def memory_cgroup(limit: int, root: Path = CGROUP_ROOT) -> Iterator[MemoryCgroup]:
    """A cgroup v1 memory cgroup capped at `limit` bytes, removed on leaving; a
    MemoryCgroup with no path (and the reason) where none can be made."""
    path = root / f"tune-adapter-bench-{os.getpid()}"
    try:
        path.mkdir()
    except OSError as exc:
        yield MemoryCgroup(None, limit, f"no memory cgroup ({exc.strerror or exc}): ran without a cap")
        return
    try:
        try:
            if not (path / "memory.limit_in_bytes").is_file():
                raise OSError(errno.ENOTSUP, f"{root} is not a cgroup v1 memory hierarchy")
            (path / "memory.limit_in_bytes").write_text(str(limit))
        except OSError as exc:
            yield MemoryCgroup(None, limit, f"memory cgroup refused a limit ({exc.strerror or exc}): ran without a cap")
            return
        yield MemoryCgroup(path, limit)
    finally:
        remove_cgroup(path)


@contextmanager
def disk_throttle(folder: Path, mb_per_s: float | None, root: Path = BLKIO_ROOT) -> Iterator[tuple[Path | None, str]]:
    """A cgroup v1 blkio cgroup whose reads of `folder`'s disk are capped at `mb_per_s`
    (a slower disk, so that a run is bound by reading, not by this machine's cores):
    (its path, "") or (None, why not). Nothing is made for `mb_per_s` None."""
    if mb_per_s is None:
        yield None, ""
        return
    path = root / f"tune-adapter-bench-{os.getpid()}"
    try:
        path.mkdir()
    except OSError as exc:
        yield None, f"no blkio cgroup ({exc.strerror or exc}): the disk ran unthrottled"
        return
    try:
        try:
            (path / "blkio.throttle.read_bps_device").write_text(f"{whole_disk(folder)} {int(mb_per_s * MB)}")
        except OSError as exc:
            yield None, f"the blkio cgroup refused a read limit ({exc.strerror or exc}): the disk ran unthrottled"
            return
        yield path, ""
    finally:
        remove_cgroup(path)


def whole_disk(folder: Path) -> str:
    """MAJ:MIN of the disk holding `folder` (a partition's parent: blkio throttles disks)."""
    dev = os.stat(folder).st_dev
    node = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    if (node / "partition").exists():
        return (node.resolve().parent / "dev").read_text().strip()
    return f"{os.major(dev)}:{os.minor(dev)}"


def remove_cgroup(path: Path) -> None:
    """rmdir once its processes are gone; the page cache charged to it moves to the parent."""
    for _ in range(50):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)


# --- the trials ----------------------------------------------------------------------

@dataclass
class TrialResult:
    """One trial's first trained epoch (validation included), and its memory."""

    epoch_seconds: float
    cpu_seconds: float  # the process's CPU time in the epoch
    queue_seconds: float  # its main thread's time runnable but waiting for a core
    major_faults: int  # in the epoch
    read_bytes: int  # fetched from storage for it in the epoch (/proc/self/io)
    peak_rss: int  # bytes: ru_maxrss, the pack's mapped pages resident in it included
    peak_private: int  # bytes: the largest RssAnon sampled, the trial's own memory

    @property
    def disk_seconds(self) -> float:
        """The epoch's time neither computing nor waiting for a core: waiting for reads
        (with 1 torch thread, whose work is all on the main thread)."""
        return max(0.0, self.epoch_seconds - self.cpu_seconds - self.queue_seconds)


@dataclass
class RunResult:
    trials: list[TrialResult]
    cgroup: str  # what capped them
    cgroup_peak: int | None = None  # bytes

    @property
    def epoch_seconds(self) -> float:
        """The slowest trial's epoch: when the concurrent epochs were all done."""
        return max(t.epoch_seconds for t in self.trials)

    def mean(self, key: str) -> float:
        return sum(getattr(t, key) for t in self.trials) / len(self.trials)


def counters() -> dict[str, float]:
    """This process's CPU time, major faults and storage reads; its thread's run-queue wait."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    queue = int(Path("/proc/thread-self/schedstat").read_text().split()[1]) / 1e9
    io = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return {"wall": time.perf_counter(), "cpu": usage.ru_utime + usage.ru_stime, "queue": queue,
            "faults": usage.ru_majflt, "read": int(io["read_bytes"])}


def trial_main(args_file: str) -> None:
    """A bench trial (in its own interpreter): open the packs, wait for the go, train, and
    write the first trained epoch's counters (from the reports of epochs 0 and 1)."""
    args = json.loads(Path(args_file).read_text())
    import torch

    from ..config import TrainConfig
    from ..data import TrainData, open_pack
    from ..trainer import train

    torch.set_num_threads(args["threads"])
    data = TrainData(train=open_pack(Path(args["pack"]) / "train"), val=open_pack(Path(args["pack"]) / "val"))
    window = {} if args["shuffle_window"] is None else {"shuffle_window": args["shuffle_window"]}
    # The least compute that still reads every row: W 1 (each frame in one window, not five),
    # float32 (no casts), a tiny adapter; the epoch is then bound by the data, as it should be.
    config = TrainConfig(batch_size=args["batch_size"], epochs=1, device="cpu", audio_window=1,
                         mixed_precision=False, intermediate_dim=INTERMEDIATE_DIM,
                         keep_freed_memory=args["keep_freed_memory"], seed=args["seed"], **window)
    sampler = PrivateMemorySampler()
    sampler.start()
    Path(args["ready"]).write_text("")
    go = Path(args["go"])
    while not go.exists():
        time.sleep(0.01)
    marks = {}

    def report(metrics: dict, _) -> None:
        marks[metrics["epoch"]] = {**counters(), "seconds": metrics["epoch_seconds"]}

    train(config, data, report=report)
    sampler.stop()
    start, end = marks[0], marks[1]
    Path(args["result"]).write_text(json.dumps({
        "epoch_seconds": end["seconds"], "peak_private": sampler.peak,
        **{key: end[key] - start[key] for key in ("cpu", "queue", "faults", "read")}}))


class PrivateMemorySampler(threading.Thread):
    """The largest RssAnon of this process, sampled every `interval` seconds."""

    def __init__(self, interval: float = 0.05):
        super().__init__(daemon=True)
        self.interval, self.peak, self.done = interval, 0, threading.Event()

    def run(self) -> None:
        while True:
            self.sample()
            if self.done.wait(self.interval):
                return

    def sample(self) -> None:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                self.peak = max(self.peak, int(line.split()[1]) * 1024)

    def stop(self) -> None:
        self.done.set()
        self.join()
        self.sample()


def run_trials(pack_dir: Path, count: int, spec: DataBenchSpec, cgroup: MemoryCgroup,
               work: Path) -> list[TrialResult]:
    """`count` trials at once, each in its own process (in the cgroup), started together
    once all have opened the pack; their resource usage from `wait4`."""
    from .. import cpu_tuning

    threads = spec.threads
    env = {**os.environ, **cpu_tuning.huge_pages_env(), "OMP_NUM_THREADS": str(threads)}
    work = Path(tempfile.mkdtemp(prefix=f"trials-{count}-", dir=work))
    go = work / "go"
    children = []
    for i in range(count):
        args = {"pack": str(pack_dir), "threads": threads, "batch_size": spec.batch_size,
                "seed": spec.seed, "keep_freed_memory": count == 1,
                "shuffle_window": spec.shuffle_window,
                "ready": str(work / f"ready-{i}"), "go": str(go), "result": str(work / f"result-{i}.json")}
        args_file = work / f"args-{i}.json"
        args_file.write_text(json.dumps(args))
        command = [sys.executable, "-c", f"from tune_adapter.bench.data import trial_main; trial_main({str(args_file)!r})"]
        children.append((subprocess.Popen(command, env=env, preexec_fn=cgroup.enter), args))
    try:
        while not all(Path(a["ready"]).exists() for _, a in children):
            if any(exited(p.pid) for p, _ in children):
                break
            time.sleep(0.05)
        go.write_text("")
        results = []
        for process, args in children:
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            if process.returncode != 0:
                raise RuntimeError(f"a bench trial failed (exit status {process.returncode}"
                                   f"{'; out of memory in the cgroup?' if process.returncode == -9 else ''})")
            out = json.loads(Path(args["result"]).read_text())
            results.append(TrialResult(out["epoch_seconds"], out["cpu"], out["queue"], out["faults"],
                                       out["read"], usage.ru_maxrss * 1024, out["peak_private"]))
        return results
    finally:
        for process, _ in children:
            if process.returncode is None:
                process.kill()
                os.waitpid(process.pid, 0)
                process.returncode = -9


def exited(pid: int) -> bool:
    """Whether a child has exited, left unreaped for `wait4` (Popen.poll would reap it)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def warm_page_cache(files: list[Path], block: int = DIRECT_BLOCK) -> None:
    """Read the files through the page cache, so a trial finds them all in memory."""
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while f.read(block):
                pass


# --- the bench -----------------------------------------------------------------------

@dataclass
class DataBenchResult:
    spec: DataBenchSpec
    pack_bytes: int  # the training shards' bytes, as read by an epoch
    clips: int
    shards: int
    shard_bytes: int
    bandwidth: Bandwidth
    cap: int  # bytes: the cgroups' memory limit
    cap_note: str  # "" where capped; else why not
    dropped: bool  # the page cache was dropped before each measurement
    runs: dict[int, RunResult] = field(default_factory=dict)  # by trials at once, capped
    in_memory: RunResult | None = None  # 1 trial, the pack in the page cache, no cap
    small_bytes: int = 0
    small: RunResult | None = None  # the small pack, the most trials at once, capped as the large
    throttle_note: str = ""  # why --disk-mbps was not applied, where asked and not

    @property
    def read_seconds(self) -> float:
        """The pack read once at the measured sequential bandwidth."""
        return self.pack_bytes / MB / self.bandwidth.mb_per_s


def measure_run(pack_dir: Path, count: int, spec: DataBenchSpec, cap: int | None, work: Path,
                drop: bool, throttle: Path | None = None) -> RunResult:
    """`count` trials at once, in a fresh cgroup capped at `cap` (None: no cgroup), the
    page cache dropped first when `drop`, the disk throttled by the blkio cgroup `throttle`."""
    if cap is None:
        return RunResult(run_trials(pack_dir, count, spec, MemoryCgroup(None, 0, throttle=throttle), work), "no cap")
    with memory_cgroup(cap) as cgroup:
        cgroup.throttle = throttle
        if drop:
            drop_page_cache()
        trials = run_trials(pack_dir, count, spec, cgroup, work)
        return RunResult(trials, cgroup.why_not or f"cgroup v1, {cap / MB:.0f} MB", cgroup.peak())


def bench_data(work_dir: Path, spec: DataBenchSpec = DataBenchSpec(),
               progress: Callable[[str], None] = lambda _: None) -> DataBenchResult:
    """Build the packs, measure, and remove them (they are GBs)."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="data-", dir=work_dir))
    try:
        with disk_throttle(work, spec.disk_mbps) as (throttle, throttle_note):
            return measure_packs(work, spec, throttle, throttle_note, progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure_packs(work: Path, spec: DataBenchSpec, throttle: Path | None, throttle_note: str,
                  progress: Callable[[str], None]) -> DataBenchResult:
    """The bench proper, in `work`, under the blkio cgroup `throttle` where there is one."""
    progress(f"writing a {spec.size_gb:g} GB pack")
    data = write_pack(work / "large", spec.size_gb, spec)
    pack_bytes = sum(f.stat().st_size for f in shard_files(data.train))
    cap = max(int(spec.cap_fraction * pack_bytes), MIN_CAP)
    progress("reading the pack with direct I/O")
    dropped = spec.drop_cache and drop_page_cache()
    with joined(throttle):
        bandwidth = sequential_read(data.train.audio.files)
    with memory_cgroup(cap) as probe:
        cap_note = probe.why_not
    result = DataBenchResult(spec, pack_bytes, len(data.train), len(data.train.audio.files),
                             data.train.audio.files[0].stat().st_size if data.train.audio.files else 0,
                             bandwidth, cap, cap_note, dropped, throttle_note=throttle_note)
    capped = None if cap_note else cap
    if fits_in_memory(pack_bytes):
        progress("1 trial, the pack in the page cache")
        warm_page_cache(shard_files(data.train))
        result.in_memory = measure_run(work / "large", 1, spec, None, work, drop=False)
    for count in spec.trials:
        progress(f"{count} trial{'s at once' if count > 1 else ''}, the pack larger than the memory cap")
        result.runs[count] = measure_run(work / "large", count, spec, capped, work, dropped, throttle)
    del data
    shutil.rmtree(work / "large")
    count = max(spec.trials)
    progress(f"{count} trial{'s at once' if count > 1 else ''} on a {spec.small_gb:g} GB pack")
    small = write_pack(work / "small", spec.small_gb, spec)
    result.small_bytes = sum(f.stat().st_size for f in shard_files(small.train))
    result.small = measure_run(work / "small", count, spec, capped, work, dropped, throttle)
    return result


@contextmanager
def joined(cgroup: Path | None) -> Iterator[None]:
    """This process inside `cgroup` (a v1 cgroup) for the block, back in its root after."""
    if cgroup is None:
        yield
        return
    (cgroup / "cgroup.procs").write_text(str(os.getpid()))
    try:
        yield
    finally:
        (cgroup.parent / "cgroup.procs").write_text(str(os.getpid()))


def fits_in_memory(size: int) -> bool:
    """Whether the pack fits in half the memory available now (for the in-memory epoch)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return size < int(line.split()[1]) * 1024 // 2
    return False


def throttled(result: DataBenchResult) -> str:
    if result.spec.disk_mbps is None:
        return ""
    return f"; {result.throttle_note}" if result.throttle_note else (
        f"; the disk throttled to {result.spec.disk_mbps:g} MB/s (--disk-mbps, blkio) for this and every capped run")


def data_sections(result: DataBenchResult) -> list:
    """The report: the disk, the epochs against it, each trial's memory on two packs."""
    from .report import Row, Section, verdict

    spec, bw = result.spec, result.bandwidth
    how = (f"O_DIRECT, {DIRECT_BLOCK // MB} MiB reads" if bw.direct
           else "O_DIRECT refused here: buffered reads after dropping the file's cache")
    disk = Section("Disk", [
        Row("sequential read bandwidth", bw.mb_per_s, "MB/s", f"{how}, {bw.bytes_read / MB:.0f} MB of the pack's shards"
            + throttled(result)),
        Row("pack (training shards)", result.pack_bytes / MB, "MB",
            f"{result.clips} clips of {spec.frames} frames in {result.shards} shards; audio "
            f"L={AUDIO_SHAPE[0]} C={AUDIO_SHAPE[1]} bf16, targets K={TARGET_SHAPE[0]} D={TARGET_SHAPE[1]} fp16"),
        Row("pack / bandwidth", result.read_seconds, "s", "the pack read once, front to back"),
    ])
    where = result.cap_note or f"each run in a memory cgroup capped at {result.cap / MB:.0f} MB"
    cache = ("the page cache dropped before each run" if result.dropped
             else "the page cache NOT dropped (needs root)")
    epochs = Section(f"Epoch ({where}, {cache}; {spec.threads} torch thread per trial, W 1, float32, I={INTERMEDIATE_DIM}, "
                     f"batch {spec.batch_size})", [])
    runs = [("1 trial, pack in memory", None, result.in_memory)]
    runs += [(f"{count} trial{'s at once' if count > 1 else ''}", count, run) for count, run in result.runs.items()]
    for label, count, run in runs:
        if run is None:
            continue
        note = "no cap, the pack read beforehand: the epoch's own work, no disk" if count is None else ""
        factor = EPOCH_FACTORS.get(count)
        if factor is not None:
            target = factor * result.read_seconds
            note = verdict(run.epoch_seconds <= target, f"target <= {factor:g} x pack / bandwidth = {target:.3g} s")
        if count and count > 1:
            note += "; the slowest trial's"
        epochs.rows += [
            Row(f"{label}: epoch", run.epoch_seconds, "s", note),
            Row(f"{label}: CPU time per trial", run.mean("cpu_seconds"), "s", "gathering batches and the steps"),
            Row(f"{label}: waiting for a core, per trial", run.mean("queue_seconds"), "s",
                "runnable, the cores busy (other trials, other processes)"),
            Row(f"{label}: waiting for reads, per trial", run.mean("disk_seconds"), "s",
                "epoch - CPU - waiting for a core: page faults that wait for the disk"),
            Row(f"{label}: major page faults per trial", run.mean("major_faults"), "",
                "a fault that reads (a page read ahead in time faults as minor)"),
            Row(f"{label}: read from disk / pack", sum(t.read_bytes for t in run.trials) / result.pack_bytes, "x",
                "all trials together: 1 = the pack read once"),
        ]
        if run.cgroup_peak is not None:
            epochs.rows.append(Row(f"{label}: cgroup peak", run.cgroup_peak / MB, "MB", "page cache charged to it included"))
    sections = [disk, epochs]
    count = len(result.small.trials) if result.small is not None else 0
    if count in result.runs:
        small, large = result.small, result.runs[count]
        spread = abs(large.mean("peak_private") - small.mean("peak_private")) / small.mean("peak_private")
        small_gb, large_gb = f"{result.small_bytes / GB:.3g}", f"{result.pack_bytes / GB:.3g}"
        title = f"{count} trial{'s at once' if count > 1 else ''}"
        sections.append(Section(f"Memory per trial (mean of {title}; both packs under the same cap)", [
            Row(f"own memory (peak RssAnon), {small_gb} GB pack", small.mean("peak_private") / MB, "MB",
                "the trial's private pages: model, optimizer, batches, heap"),
            Row(f"own memory (peak RssAnon), {large_gb} GB pack", large.mean("peak_private") / MB, "MB",
                verdict(spread <= RSS_TOLERANCE, f"target within {RSS_TOLERANCE:.0%} of the small pack's ({spread:.1%})")),
            Row(f"peak RSS, {small_gb} GB pack", small.mean("peak_rss") / MB, "MB", "mapped pack pages included"),
            Row(f"peak RSS, {large_gb} GB pack", large.mean("peak_rss") / MB, "MB",
                "mapped pack pages included: bounded by the cap, not the pack"),
        ]))
    return sections
