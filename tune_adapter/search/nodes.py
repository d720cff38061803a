"""The cluster's nodes and the data, before any trial starts.

- `--data URI`: one Ray task per alive node, pinned to it, stages the pack into that
  node's cache (data/staging.py), so no trial waits on a fetch; a node that joins later
  stages in its first trial.
- A local pack (a `--data` folder, or a manifest's pack in the driver's cache) on a
  cluster of several nodes: one task per node checks that it can read the pack's index;
  a node that cannot is refused by name, before any trial could fail there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, DataError


@dataclass(frozen=True)
class NodeStaging:
    node: str  # its address
    folder: str  # the node's copy
    fetched_bytes: int  # 0: it had the copy already
    seconds: float


def alive_nodes() -> list[dict]:
    import ray

    return [node for node in ray.nodes() if node["Alive"]]


def on_every_node(function, *args) -> list[tuple[str, object]]:
    """(node address, result) of `function(*args)` run once on each alive node; a task's
    UserError comes back as a DataError naming the node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(function)
    calls = [(node["NodeManagerAddress"],
              task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(*args))
             for node in alive_nodes()]
    results = []
    for address, call in calls:
        try:
            results.append((address, ray.get(call)))
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, (DataError, ConfigError)):
                raise DataError(f"node {address}: {cause}") from None
            raise
    return results


def stage_here(uri: str) -> tuple[str, int, float]:
    from ..data.staging import stage_pack

    staged = stage_pack(uri)
    return str(staged.folder), staged.fetched_bytes, staged.seconds


def stage_on_nodes(uri: str) -> list[NodeStaging]:
    """The pack at `uri` staged on every alive node, each into its own cache."""
    return [NodeStaging(address, *result) for address, result in on_every_node(stage_here, uri)]


def sees_packs(folders: list[str]) -> list[str]:
    """Those of `folders` whose pack index this node cannot read."""
    from ..data.pack import INDEX_FILE

    return [folder for folder in folders if not (Path(folder) / INDEX_FILE).is_file()]


def check_nodes_see(folders: list[str]) -> None:
    """Refuse a local pack that some node of a multi-node cluster cannot read."""
    if len(alive_nodes()) < 2:
        return  # the driver's node: it opened the pack itself
    for address, missing in on_every_node(sees_packs, folders):
        if missing:
            raise ConfigError(
                f"node {address} cannot read the pack at {missing[0]}: its nodes share no folder with this "
                "machine; put the data where every node can fetch it, with tune-adapter pack --manifest M "
                "--out s3://BUCKET/NAME (or gs://, or a file:// path all nodes mount), then --data that URI")


def prepare_nodes(data_uri: str | None, pack_folders: list[str]) -> list[NodeStaging]:
    """Before the trials: stage a URI's pack on every node, or check a local pack is seen."""
    if data_uri is not None:
        return stage_on_nodes(data_uri)
    check_nodes_see(pack_folders)
    return []


def staging_line(uri: str, staged: list[NodeStaging]) -> str:
    fetched = [s for s in staged if s.fetched_bytes]
    line = f"{uri}: staged on {len(staged)} node(s)"
    if fetched:
        gb, seconds = sum(s.fetched_bytes for s in fetched) / 1e9, max(s.seconds for s in fetched)
        line += f", {len(fetched)} fetched it ({gb:.3g} GB, {seconds:.1f} s)"
    return line
