"""Is a model file complete? A structural check cheap enough to run before every load.

ONNX: the file is a protobuf ``ModelProto``. We walk its fields and those of its ``GraphProto``
(headers only; payloads are skipped through a memory map, so a 2 GB model costs a few page reads)
and require the lengths to end exactly at the end of each message, an ``ir_version``, a graph and
at least one graph output. A truncated or overwritten file fails; a flipped byte inside a weight
does not (nothing but a checksum would catch that, and MLflow records none).

int8 (``headrace quantize``): the header's magic, payload length and CRC-32 are checked.
"""

from __future__ import annotations

import mmap
import struct
import zlib
from pathlib import Path

from headrace.errors import InvalidArgumentError

# ModelProto field numbers (onnx.proto3): the two every model must carry.
_MODEL_IR_VERSION = 1
_MODEL_GRAPH = 7
# GraphProto: outputs.
_GRAPH_OUTPUT = 12
_WIRE_VARINT, _WIRE_I64, _WIRE_LEN, _WIRE_I32 = 0, 1, 2, 5
_MAX_VARINT_BYTES = 10


class IncompleteModelError(InvalidArgumentError):
    """The model file is truncated, overwritten or not a model of its kind."""


def _varint(data: mmap.mmap | bytes, offset: int, end: int) -> tuple[int, int]:
    value = 0
    for index in range(_MAX_VARINT_BYTES):
        if offset + index >= end:
            raise IncompleteModelError("varint runs past the end of its message")
        byte = data[offset + index]
        value |= (byte & 0x7F) << (7 * index)
        if byte < 0x80:
            return value, offset + index + 1
    raise IncompleteModelError("varint longer than 10 bytes")


def _walk(data: mmap.mmap | bytes, start: int, end: int) -> dict[int, list[tuple[int, int]]]:
    """Field number -> [(payload start, payload end)] for one message; raises when malformed."""
    fields: dict[int, list[tuple[int, int]]] = {}
    offset = start
    while offset < end:
        tag, offset = _varint(data, offset, end)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise IncompleteModelError("field number 0")
        if wire == _WIRE_VARINT:
            _, next_offset = _varint(data, offset, end)
        elif wire == _WIRE_I64:
            next_offset = offset + 8
        elif wire == _WIRE_I32:
            next_offset = offset + 4
        elif wire == _WIRE_LEN:
            length, offset = _varint(data, offset, end)
            next_offset = offset + length
        else:
            raise IncompleteModelError(f"wire type {wire} (groups are not used by ONNX)")
        if next_offset > end:
            raise IncompleteModelError(
                f"field {number} needs {next_offset - end} bytes more than the message holds"
            )
        fields.setdefault(number, []).append((offset, next_offset))
        offset = next_offset
    return fields


def check_onnx(path: Path) -> None:
    """IncompleteModelError unless ``path`` is a structurally complete ONNX model."""
    size = path.stat().st_size
    if size == 0:
        raise IncompleteModelError(f"{path} is empty")
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        try:
            model = _walk(data, 0, size)
            if _MODEL_IR_VERSION not in model or _MODEL_GRAPH not in model:
                raise IncompleteModelError("no ir_version or no graph")
            graph_start, graph_end = model[_MODEL_GRAPH][-1]
            graph = _walk(data, graph_start, graph_end)
            if _GRAPH_OUTPUT not in graph:
                raise IncompleteModelError("the graph declares no output")
        except IncompleteModelError as error:
            raise IncompleteModelError(
                f"{path} is not a complete ONNX model ({error.message})"
            ) from None


def check_int8(path: Path) -> None:
    """IncompleteModelError unless ``path`` is a complete ``model.int8`` (magic, length, CRC)."""
    from headrace.quant.file_format import MAGIC, READABLE_VERSIONS

    header = struct.Struct("<IIQ")
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(len(MAGIC) + header.size)
        if len(head) < len(MAGIC) + header.size or not head.startswith(MAGIC):
            raise IncompleteModelError(f"{path} is not a headrace int8 model (bad header)")
        version, crc, length = header.unpack_from(head, len(MAGIC))
        if version not in READABLE_VERSIONS:
            raise IncompleteModelError(
                f"{path}: int8 format version {version}, expected one of {READABLE_VERSIONS}"
            )
        if size - len(head) != length:
            raise IncompleteModelError(
                f"{path}: int8 payload is {size - len(head)} bytes, the header says {length}"
            )
        running = 0
        while chunk := handle.read(1 << 20):
            running = zlib.crc32(chunk, running)
    if running != crc:
        raise IncompleteModelError(f"{path}: int8 payload is corrupt (CRC-32 mismatch)")


def check_model_file(path: Path, backend: str) -> None:
    """Verify a model file for its backend; IncompleteModelError when it is not complete."""
    if not path.is_file():
        raise IncompleteModelError(f"{path} is missing")
    if backend == "onnxruntime":
        check_onnx(path)
    elif backend == "int8":
        check_int8(path)
    else:
        raise IncompleteModelError(f"{path}: no check for backend '{backend}'")
