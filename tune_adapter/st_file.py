"""A safetensors file's layout, and a copy of one with some tensors replaced.

The safetensors library writes a file from a dict of tensors held in memory. An
InfiniteTalk weights file is many GB, so a merge must not hold it: this module reads the
header (an 8-byte little-endian length, then JSON: name -> dtype, shape, byte range), and
writes the copy tensor by tensor, moving untouched tensors as raw bytes. Those tensors stay
byte-identical by construction, and at most one chunk of the file is in memory at a time.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from .atomic import atomic_write
from .errors import DataError

METADATA_KEY = "__metadata__"
COPY_CHUNK = 16 << 20
MAX_HEADER = 100 << 20  # the safetensors library's own limit

ITEM_SIZE = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2,
             "BF16": 2, "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1,
             "F8_E4M3": 1, "F8_E5M2": 1}
TORCH_DTYPE = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
               "BF16": torch.bfloat16}
DTYPE_NAME = {v: k for k, v in TORCH_DTYPE.items()}


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: str  # safetensors' name: F32, BF16, ...
    shape: tuple[int, ...]
    start: int  # byte range within the data section
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Layout:
    header: bytes  # the JSON header as stored (with its padding)
    entries: list[Entry]  # in data order
    metadata: dict[str, str] | None

    @property
    def data_start(self) -> int:
        return 8 + len(self.header)

    def by_name(self) -> dict[str, Entry]:
        return {e.name: e for e in self.entries}


def read_layout(path: Path) -> Layout:
    path = Path(path)
    with open(path, "rb") as f:
        size_bytes = f.read(8)
        if len(size_bytes) < 8:
            raise DataError(f"{path} is not a safetensors file (shorter than its 8-byte header size)")
        (size,) = struct.unpack("<Q", size_bytes)
        if size > MAX_HEADER:
            raise DataError(f"{path} is not a safetensors file (header size {size} is implausible)")
        header = f.read(size)
    try:
        items = json.loads(header)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"{path} is not a safetensors file (its header is not JSON)") from None
    metadata = items.pop(METADATA_KEY, None)
    entries = [Entry(name, v["dtype"], tuple(v["shape"]), *v["data_offsets"]) for name, v in items.items()]
    entries.sort(key=lambda e: e.start)
    return Layout(header, entries, metadata)


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """A tensor's little-endian C-order bytes, as safetensors stores them."""
    flat = tensor.detach().contiguous().cpu().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def build_header(entries: list[Entry], metadata: dict[str, str] | None) -> bytes:
    items: dict = {METADATA_KEY: metadata} if metadata is not None else {}
    for e in entries:
        items[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [e.start, e.end]}
    header = json.dumps(items, separators=(",", ":")).encode()
    # Padded with spaces to a multiple of 8, as the safetensors library does, so the data
    # section (and every tensor, see `packed_entries`) starts aligned.
    return header + b" " * (-len(header) % 8)


def packed_entries(sized: list[tuple[str, str, tuple[int, ...], int]]) -> list[Entry]:
    """Contiguous byte ranges, widest element type first so every tensor is aligned."""
    order = sorted(range(len(sized)), key=lambda i: -ITEM_SIZE.get(sized[i][1], 1))
    entries, offset = [], 0
    for i in order:
        name, dtype, shape, nbytes = sized[i]
        entries.append(Entry(name, dtype, shape, offset, offset + nbytes))
        offset += nbytes
    return entries


def write_replaced(source: Path, out: Path, replace: dict[str, torch.Tensor],
                   drop: set[str] = frozenset()) -> None:
    """Copy `source` to `out` with the tensors in `replace` swapped in (added when new)
    and those in `drop` left out; everything else is copied as raw bytes. Atomic."""
    layout = read_layout(source)
    old = layout.by_name()
    kept = [e for e in layout.entries if e.name not in drop]
    same_layout = not drop and all(
        name in old and _fits(old[name], tensor) for name, tensor in replace.items()
    )
    if same_layout:
        # Every replacement has its old dtype and shape: the header and every offset stay.
        header, entries = layout.header, kept
    else:
        sized = [(e.name, e.dtype, e.shape, e.nbytes) for e in kept if e.name not in replace]
        sized += [(name, DTYPE_NAME[t.dtype], tuple(t.shape), t.numel() * t.element_size())
                  for name, t in replace.items()]
        entries = packed_entries(sized)
        header = build_header(entries, layout.metadata)

    def write(path: Path) -> None:
        with open(source, "rb") as src, open(path, "wb") as dst:
            dst.write(struct.pack("<Q", len(header)))
            dst.write(header)
            for entry in entries:
                if entry.name in replace:
                    dst.write(tensor_bytes(replace[entry.name]))
                else:
                    _copy_range(src, dst, layout.data_start + old[entry.name].start, entry.nbytes)

    atomic_write(out, write)


def _fits(entry: Entry, tensor: torch.Tensor) -> bool:
    return DTYPE_NAME.get(tensor.dtype) == entry.dtype and tuple(tensor.shape) == entry.shape


def _copy_range(src, dst, start: int, length: int) -> None:
    src.seek(start)
    while length > 0:
        chunk = src.read(min(COPY_CHUNK, length))
        if not chunk:
            raise DataError(f"{src.name} ends early: the file is truncated")
        dst.write(chunk)
        length -= len(chunk)
