"""Reading TensorBoard event files without TensorBoard: TFRecord framing, then tensorboardX's
Event protos; and the hparams plugin's data in them (what its HParams tab shows)."""

from __future__ import annotations

import struct
from pathlib import Path

from tensorboardX.proto.event_pb2 import Event
from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData


def read_events(path: Path) -> list[Event]:
    """Each record: length (u64), its CRC (u32), the Event, its CRC (u32); CRCs unchecked."""
    data, events, at = Path(path).read_bytes(), [], 0
    while at < len(data):
        (length,) = struct.unpack_from("<Q", data, at)
        events.append(Event.FromString(data[at + 12: at + 12 + length]))
        at += 12 + length + 4
    return events


def run_data(run: Path) -> dict:
    """One run folder (its own files, not its subfolders'): hparams plugin data by tag, in
    the order written, and each scalar tag's last value."""
    plugin, scalars = {}, {}
    for path in sorted(Path(run).glob("events.out.tfevents.*")):
        for event in read_events(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "hparams":
                    data = HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    plugin.setdefault(value.tag, []).append(data)
                elif value.HasField("simple_value"):
                    scalars[value.tag] = (event.step, value.simple_value)
    return {"hparams": plugin, "scalars": scalars}


def sessions(folder: Path) -> dict[str, dict]:
    """Every run under `folder` that holds a session: run name -> its hparams (Python values),
    end status (a name) and scalars; and, under ".", the experiment summaries."""
    found = {}
    for run in sorted({p.parent for p in Path(folder).rglob("events.out.tfevents.*")}):
        data = run_data(run)
        starts = data["hparams"].get("_hparams_/session_start_info", [])
        name = "." if run == Path(folder) else str(run.relative_to(folder))
        found[name] = {
            "starts": len(starts),
            "params": {k: getattr(v, v.WhichOneof("kind")) for k, v in starts[0].session_start_info.hparams.items()}
            if starts else {},
            "ends": [d.session_end_info.status for d in data["hparams"].get("_hparams_/session_end_info", [])],
            "experiments": [d.experiment for d in data["hparams"].get("_hparams_/experiment", [])],
            "scalars": data["scalars"],
        }
    return found
