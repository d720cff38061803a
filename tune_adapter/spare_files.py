"""Checkpoint files written over a spent checkpoint's files, so the page cache is reused.

On the bench VM, memory the kernel has freed is handed back to the hypervisor within
about 2 s (virtio-balloon free page reporting) and costs about 2.5 s per GB to touch again:
a new 0.9 GB checkpoint file (InfiniteTalk's dims) took 2.3 s to write, the same bytes
written over an existing file's cached pages 0.1 s. A run therefore keeps spent
checkpoint folders as spares (`SparePool`) and writes the next checkpoint's files over a
spare's (`open_for_overwrite`) instead of deleting one folder and creating another.

A file is only written over when no other name links it: a file Tune has hard-linked
into the experiment's storage (search/storage.py) is that stored checkpoint, so its name
in the spare is dropped and a new file made instead.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
from pathlib import Path
from typing import BinaryIO

import torch

SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}


def open_for_overwrite(path: Path) -> BinaryIO:
    """`path` opened for writing from its start, over its old bytes when it is a file no
    other name links; the caller truncates at the end of what it wrote."""
    try:
        links = os.stat(path).st_nlink
    except FileNotFoundError:
        return open(path, "wb")
    if links == 1:
        return open(path, "r+b")
    os.unlink(path)
    return open(path, "wb")


def write_bytes(path: Path, data: bytes) -> None:
    with open_for_overwrite(path) as f:
        f.write(data)
        f.truncate()


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """A safetensors file (the format of huggingface/safetensors, which `load_file` reads),
    written straight from the tensors' memory through `open_for_overwrite`: the library's
    own writer truncates the file first, which hands its cached pages back."""
    ordered = sorted(((name, t.detach().contiguous().cpu()) for name, t in tensors.items()),
                     key=lambda item: (-item[1].element_size(), item[0]))
    with open_for_overwrite(path) as f:
        f.write(safetensors_header(ordered, metadata))
        for _, tensor in ordered:
            f.write(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
        f.truncate()


def safetensors_header(ordered: list[tuple[str, torch.Tensor]], metadata: dict[str, str] | None) -> bytes:
    """Length (u64, little-endian), then the JSON header padded with spaces to 8 bytes.

    Tensors are laid out widest dtype first, as the library does, so every tensor's offset
    stays a multiple of its element size."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, tensor in ordered:
        end = offset + tensor.numel() * tensor.element_size()
        header[name] = {"dtype": SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, end]}
        offset = end
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


class SparePool:
    """Up to `size` retired checkpoint folders under `root`, for the next checkpoints to be
    written over. Two: a search trial's final checkpoint (weights only) is written afresh
    and leaves both spares for the actor's next trial, whose first two checkpoints would
    otherwise find one (Tune still holds the first when the second is written)."""

    def __init__(self, root: Path, size: int = 2):
        self.root, self.size = Path(root), size

    def spares(self) -> list[Path]:
        return sorted(p for p in self.root.glob("spare-*") if p.is_dir()) if self.root.is_dir() else []

    def retire(self, folder: Path) -> None:
        """Make a checkpoint folder no longer wanted a spare, or delete it when the pool is
        full. Its state file goes first, so a spare never passes for a checkpoint."""
        from .checkpoint import STATE_FILE

        taken = {p.name for p in self.spares()}
        free = [f"spare-{i}" for i in range(self.size) if f"spare-{i}" not in taken]
        if not free:
            shutil.rmtree(folder, ignore_errors=True)
            return
        (folder / STATE_FILE).unlink(missing_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(folder, self.root / free[0])
        except OSError:  # another filesystem: nothing to reuse there
            shutil.rmtree(folder, ignore_errors=True)

    def take(self, folder: Path) -> None:
        """Move a spare to `folder` (a staging folder to write a checkpoint into), one whose
        files no other name links first; or make `folder` new when there is none."""
        shutil.rmtree(folder, ignore_errors=True)
        folder.parent.mkdir(parents=True, exist_ok=True)
        for spare in sorted(self.spares(), key=linked_elsewhere):
            try:
                os.rename(spare, folder)
                return
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                shutil.rmtree(spare, ignore_errors=True)  # another filesystem: of no use
        folder.mkdir()

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def linked_elsewhere(folder: Path) -> int:
    """How many of the folder's files another name (Tune's stored checkpoint) also links."""
    return sum(p.stat().st_nlink > 1 for p in folder.iterdir())
