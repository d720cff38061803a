"""`tune-adapter bench`: the trainer's speed and memory, search cost, ASHA, quality, faults, data."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated, Optional

import typer


def bench(
    dims: Annotated[str, typer.Option(help="infinitetalk or tiny")] = "infinitetalk",
    frames: Annotated[int, typer.Option(help="Frames per clip")] = 81,
    batch_size: int = 4,
    steps: Annotated[int, typer.Option(help="Timed steps (after 2 warm-up steps)")] = 10,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    mixed_precision: Annotated[bool, typer.Option(help="bf16 matrix products (CPU) / bf16 autocast (CUDA)")] = True,
    lengths: Annotated[tuple[int, int], typer.Option(help="Clip lengths of the padding measurement")] = (21, 121),
    search: Annotated[bool, typer.Option("--search", help="Instead: memory and overhead of two concurrent trials")] = False,
    asha: Annotated[bool, typer.Option("--asha", help="Instead: ASHA against the same trials unpruned")] = False,
    quality: Annotated[bool, typer.Option("--quality", help="Instead: the default search against random search, the guide's defaults and a grid, on 4 synthetic tasks")] = False,
    confirm: Annotated[bool, typer.Option("--confirm", help="Instead: on the --quality tasks, how often `confirm` keeps the search's winner")] = False,
    pack_quality: Annotated[bool, typer.Option("--pack-quality", help="Instead: on the --quality tasks, float32 packs against half precision and shard windows")] = False,
    seeds: Annotated[int, typer.Option(help="--quality, --confirm, --pack-quality: search seeds per task")] = 3,
    faults: Annotated[bool, typer.Option("--faults", help="Instead: kill tiny searches at many moments, resume, check the records")] = False,
    data: Annotated[bool, typer.Option("--data", help="Instead: epochs on a pack larger than memory (a cgroup cap) against the disk's bandwidth; root drops the page cache")] = False,
    staging: Annotated[bool, typer.Option("--staging", help="Instead: upload a synthetic pack to S3 (--uri, else a local moto server), stage it into a node cache, and time a search's first trial with and without staging")] = False,
    uri: Annotated[Optional[str], typer.Option(metavar="URI", help="--staging: where to upload the pack (s3://BUCKET/PREFIX) [a moto server on 127.0.0.1]")] = None,
    size: Annotated[Optional[float], typer.Option(help="--data, --staging: the synthetic pack's size, GB (written under --work-dir, then removed) [4, 2]")] = None,
    disk_mbps: Annotated[Optional[float], typer.Option(help="--data: throttle the pack's disk to this many MB/s (cgroup v1 blkio, root), as a slower disk: where the cores outrun the disk, the epoch is bound by reading, as the targets assume")] = None,
    work_dir: Annotated[Path, typer.Option(help="Data and experiments of --search/--asha, the packs of --data")] = Path("results/bench"),
    trials: Annotated[Optional[int], typer.Option(help="--search: InfiniteTalk-sized trials, two at a time [16: a default search's size]; --data: runs of 1 to N trials at once [2]")] = None,
    checkpoint_every: Annotated[int, typer.Option(help="--search: checkpoint every N epochs")] = 1,
):
    """Time the trainer against its floor and a straightforward trainer; report RSS and padding.

    --search runs InfiniteTalk-sized trials two at a time through Ray Tune; --asha runs the
    default search with ASHA and then the same 16 configurations without pruning; --faults
    SIGKILLs tiny searches at chosen moments and resumes them; --data times epochs on a
    synthetic pack larger than a memory cap against the disk's bandwidth."""
    from ..bench.trainer import BenchSpec, run_bench
    from ..space import SHIPPED_DIR, space_path
    from ..views.display import bench_table, console, sections_table

    if quality:
        from ..bench.quality import bench_quality, quality_sections

        with console.status("benchmarking: search quality (real searches; about 17 minutes on 2 cores)"):
            results = bench_quality(work_dir / "quality", SHIPPED_DIR, seeds=seeds)
        console.print(sections_table("tune-adapter bench: search quality", quality_sections(results)))
        return
    if pack_quality:
        from ..bench.pack_quality import bench_pack_quality, pack_quality_sections

        with console.status("benchmarking: pack formats (fixed trainings and searches per task and setting)"):
            results = bench_pack_quality(work_dir / "pack_quality", SHIPPED_DIR, seeds=seeds)
        console.print(sections_table("tune-adapter bench: pack formats", pack_quality_sections(results)))
        return
    if confirm:
        from ..bench.confirm import bench_confirm, confirm_sections

        with console.status("benchmarking: confirmation (a search and a confirmation per task and seed)"):
            results = bench_confirm(work_dir / "confirm", SHIPPED_DIR, seeds=seeds)
        console.print(sections_table("tune-adapter bench: confirmation", confirm_sections(results)))
        return
    if faults:
        bench_faults_command(work_dir)
        return
    if data:
        bench_data_command(work_dir, 4.0 if size is None else size, 2 if trials is None else trials, disk_mbps)
        return
    if staging:
        bench_staging_command(work_dir, 2.0 if size is None else size, uri)
        return
    if search or asha:
        from ..bench.asha import bench_asha
        from ..bench.search import bench_search

        if search:
            what = "search cost"
            run = partial(bench_search, work_dir, space_path("bench"), trials=16 if trials is None else trials,
                          checkpoint_every=checkpoint_every)
        else:
            what = "ASHA against no pruning"
            run = partial(bench_asha, work_dir, space_path("default"))
        with console.status(f"benchmarking: {what} (real searches; minutes)"):
            sections = run()
        console.print(sections_table(f"tune-adapter bench: {what}", sections))
        return

    spec = BenchSpec(dims=dims, frames=frames, batch_size=batch_size, steps=steps, device=device,
                     mixed_precision=mixed_precision, mixed_lengths=lengths)
    with console.status("benchmarking (each trainer in its own process)"):
        report = run_bench(spec)
    console.print(bench_table(report))


def bench_faults_command(work_dir: Path) -> None:
    """--faults: SIGKILL tiny searches at chosen moments, resume them, check their records."""
    from ..views.display import console
    from ..bench.faults import BENCH_KILLS, bench_faults, failure_lines, outcomes_table
    from ..space import space_path

    what = f"{len(BENCH_KILLS)} kill points, each a search killed and resumed (minutes)"
    with console.status(f"benchmarking: {what}") as status:
        search, outcomes = bench_faults(
            work_dir / "faults", space_path("tiny"),
            progress=lambda o: status.update(f"benchmarking: kill point {' > '.join(o.kills)} done"))
    console.print(outcomes_table(search, outcomes))
    for line in failure_lines(search, outcomes):
        console.print(line, soft_wrap=True, style="red", markup=False)
    console.print(f"experiments: {search.storage}", soft_wrap=True)
    if not all(o.ok(search) for o in outcomes):
        raise typer.Exit(1)


def bench_data_command(work_dir: Path, size: float, trials: int, disk_mbps: float | None) -> None:
    """--data: a synthetic pack larger than a memory cap, read by 1..N trials at once."""
    from ..bench.data import DataBenchSpec, bench_data, data_sections
    from ..views.display import console, sections_table

    spec = DataBenchSpec(size_gb=size, trials=tuple(range(1, trials + 1)), disk_mbps=disk_mbps)
    with console.status("benchmarking: data reading") as status:
        result = bench_data(work_dir, spec, progress=lambda what: status.update(f"benchmarking: {what}"))
    console.print(sections_table(f"tune-adapter bench: data ({size:g} GB pack)", data_sections(result)))


def bench_staging_command(work_dir: Path, size: float, uri: str | None) -> None:
    """--staging: a pack at a URI, staged into a node's cache; a search's first trial with it."""
    from ..bench.s3_endpoint import NoEndpoint
    from ..bench.staging import bench_staging, staging_sections
    from ..errors import ConfigError
    from ..views.display import console, sections_table

    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        with console.status("benchmarking: staging") as status:
            result = bench_staging(work_dir, size, uri, progress=lambda what: status.update(f"benchmarking: {what}"))
    except NoEndpoint as exc:
        raise ConfigError(f"--staging needs an S3 endpoint: {exc}; or give --uri s3://BUCKET/PREFIX") from None
    console.print(sections_table(f"tune-adapter bench: staging ({size:g} GB pack)", staging_sections(result)))
