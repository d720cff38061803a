"""Checkpoint files written over a spent checkpoint's files, so the page cache is reused.

On the bench VM, memory the kernel has freed is handed back to the hypervisor within
about 2 s (virtio-balloon free page reporting) and costs about 2.5 s per GB to touch again:
a new 0.9 GB checkpoint file (InfiniteTalk's dims) took 2.3 s to write, the same bytes
written over an existing file's cached pages 0.1 s. A run therefore keeps one spent
checkpoint folder as its spare (`retire`) and writes the next checkpoint's files over
the spare's (`open_for_overwrite`) instead of deleting one folder and creating another.

A file is only written over when no other name links it: a file Tune has hard-linked
into the experiment's storage (search/storage.py) is that stored checkpoint, so its name
in the spare is dropped and a new file made instead.
"""

from __future__ import annotations

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


def retire(folder: Path, spare: Path) -> None:
    """Make a checkpoint folder that is no longer wanted the spare (or delete it when there
    already is one). Its state file goes first, so it can never pass for a checkpoint."""
    from .checkpoint import STATE_FILE

    if spare.exists():
        shutil.rmtree(folder, ignore_errors=True)
        return
    (folder / STATE_FILE).unlink(missing_ok=True)
    try:
        os.rename(folder, spare)
    except OSError:  # another filesystem: nothing to reuse there
        shutil.rmtree(folder, ignore_errors=True)


def take_spare(spare: Path | None, folder: Path) -> None:
    """Move the spare to `folder` (a staging folder to write a checkpoint into), or make
    `folder` empty and new when there is no spare."""
    shutil.rmtree(folder, ignore_errors=True)
    if spare is not None and spare.is_dir():
        try:
            os.rename(spare, folder)
            return
        except OSError:
            shutil.rmtree(spare, ignore_errors=True)
    folder.mkdir(parents=True)
