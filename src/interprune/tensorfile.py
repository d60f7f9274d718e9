"""The safetensors format, read one tensor and written one tensor at a time.

``safetensors`` itself maps a file into memory and saves a whole dict at once. Both cost a streamed
shrink memory it does not need: the pages of a mapped file count in the process's resident size for as
long as the file stays open (the whole source, by the end), and ``save_file`` holds every tensor of a
shard plus their serialised bytes. The format is simple enough to do both ways without either: an 8-byte
little-endian header length, a JSON header (dtype, shape and byte range of each tensor), then the bytes.
A tensor is read with ``preadv`` into memory of its own, freed when the caller lets it go, and a shard's
header is written first (every name, dtype and shape is known before any value), so each value goes to
disk as soon as it is made. Files written here are read back by ``safetensors`` itself (tested).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import BinaryIO

import torch
from torch import Tensor

__all__ = ["DTYPES", "nbytes", "read_header", "read_tensor", "TensorFileWriter"]

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
CODES = {dtype: code for code, dtype in DTYPES.items()}


def read_header(path: Path) -> tuple[int, dict[str, dict]]:
    """Where the data of ``path`` starts and its header (name -> dtype, shape, data_offsets), checked
    against the file's size, so a truncated or foreign file is refused before any tensor is read."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        if size < 8 or length > size - 8:
            raise ValueError("the header length is past the end of the file")
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    start = 8 + length
    for name, entry in header.items():
        if entry.get("dtype") not in DTYPES:
            raise ValueError(f"tensor {name} has dtype {entry.get('dtype')!r}, which this reader does not know")
        if start + entry["data_offsets"][1] > size:
            raise ValueError(f"tensor {name} ends past the end of the file")
    return start, header


def read_tensor(fd: int, start: int, entry: dict) -> Tensor:
    """One tensor of an open file, in memory of its own (not a view of a mapped file)."""
    begin, end = entry["data_offsets"]
    dtype, shape = DTYPES[entry["dtype"]], entry["shape"]
    if end == begin:
        return torch.empty(shape, dtype=dtype)
    buffer = bytearray(end - begin)
    view, done = memoryview(buffer), 0
    while done < len(buffer):
        got = os.preadv(fd, [view[done:]], start + begin + done)
        if got <= 0:
            raise OSError(f"the file ended {len(buffer) - done} bytes early")
        done += got
    return torch.frombuffer(buffer, dtype=dtype).reshape(shape)


class TensorFileWriter:
    """One safetensors file whose tensors are all declared up front (name -> dtype and shape, in the order
    they will arrive) and written as they arrive; ``close`` checks that every one came."""

    def __init__(self, path: Path, layout: list[tuple[str, torch.dtype, tuple[int, ...]]]):
        header, offset = {}, 0
        for name, dtype, shape in layout:
            size = nbytes(dtype, shape)
            header[name] = {"dtype": CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        header["__metadata__"] = {"format": "pt"}
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
        self.order = [name for name, _, _ in layout]
        self.header, self.done = header, 0
        self.file: BinaryIO = open(path, "wb")
        self.file.write(len(text).to_bytes(8, "little") + text)

    def write(self, name: str, value: Tensor) -> None:
        expected = self.header[self.order[self.done]]
        if name != self.order[self.done] or CODES.get(value.dtype) != expected["dtype"] \
                or list(value.shape) != expected["shape"]:
            raise ValueError(f"{name} {value.dtype} {list(value.shape)} arrived where the file expects "
                             f"{self.order[self.done]} {expected['dtype']} {expected['shape']}")
        if value.numel():
            self.file.write(value.detach().contiguous().reshape(-1).view(torch.uint8).numpy().data)
        self.done += 1

    def close(self) -> None:
        if self.done != len(self.order):
            raise ValueError(f"{len(self.order) - self.done} tensors were never written, first "
                             f"{self.order[self.done]}")
        self.file.close()


def nbytes(dtype: torch.dtype, shape: tuple[int, ...]) -> int:
    """The bytes a tensor of ``dtype`` and ``shape`` takes in the file."""
    return torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
