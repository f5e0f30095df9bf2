"""Read a TensorFlow 1 checkpoint (a "tensor bundle") with numpy alone.

A bundle with prefix ``P`` is two files:

* ``P.index``: a LevelDB-format sorted table mapping each variable name to a
  ``BundleEntryProto`` (dtype, shape, shard, byte offset and size in the data file);
* ``P.data-00000-of-00001``: the tensors' raw little-endian bytes, back to back.

Only single-shard, uncompressed, little-endian bundles of numeric tensors are supported; that
is what ``tf.train.Saver`` writes on ordinary machines. Checksums are not verified.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.teachers.weights import InvalidWeightsError

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_BYTES = 48
_BLOCK_TRAILER_BYTES = 5  # one compression-type byte, then a 4-byte crc

# tensorflow/core/framework/types.proto → numpy (little-endian).
_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),
    2: np.dtype("<f8"),
    3: np.dtype("<i4"),
    4: np.dtype("u1"),
    5: np.dtype("<i2"),
    6: np.dtype("i1"),
    9: np.dtype("<i8"),
    10: np.dtype("?"),
    17: np.dtype("<u2"),
    19: np.dtype("<f2"),
    22: np.dtype("<u4"),
    23: np.dtype("<u8"),
}


class CheckpointFormatError(InvalidWeightsError):
    """The files are not a checkpoint this reader understands."""


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives in the data file."""

    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int
    size: int


# --- protobuf wire format ---------------------------------------------------------------------


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode a base-128 varint at ``pos`` → (value, position after it)."""
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise CheckpointFormatError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _proto_fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """Split a protobuf message into (field number, value) pairs; varints as int, rest as bytes."""
    fields: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire_type = tag >> 3, tag & 7
        value: int | bytes
        if wire_type == 0:
            value, pos = _varint(buf, pos)
        elif wire_type == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire_type == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire_type == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise CheckpointFormatError(f"unsupported protobuf wire type {wire_type}")
        fields.append((number, value))
    return fields


def _parse_shape(buf: bytes) -> tuple[int, ...]:
    """TensorShapeProto: repeated ``dim`` (field 2), each a Dim whose ``size`` is field 1."""
    dims = []
    for number, value in _proto_fields(buf):
        if number == 2:
            assert isinstance(value, bytes)
            sizes = [v for n, v in _proto_fields(value) if n == 1]
            dims.append(int(sizes[0]) if sizes else 0)
        elif number == 3 and value:
            raise CheckpointFormatError("tensor of unknown rank")
    return tuple(dims)


def _parse_entry(name: str, buf: bytes) -> TensorEntry:
    """BundleEntryProto: dtype=1, shape=2, shard_id=3, offset=4, size=5, crc32c=6, slices=7."""
    fields = dict(_proto_fields(buf))
    if fields.get(3, 0) != 0:
        raise CheckpointFormatError(f"{name}: multi-shard checkpoints are not supported")
    if 7 in fields:
        raise CheckpointFormatError(f"{name}: sliced (partitioned) variables are not supported")
    code = int(fields.get(1, 0))  # type: ignore[arg-type]
    if code not in _DTYPES:
        raise CheckpointFormatError(f"{name}: unsupported tensor dtype code {code}")
    shape_buf = fields.get(2, b"")
    assert isinstance(shape_buf, bytes)
    return TensorEntry(
        dtype=_DTYPES[code],
        shape=_parse_shape(shape_buf),
        offset=int(fields.get(4, 0)),  # type: ignore[arg-type]
        size=int(fields.get(5, 0)),  # type: ignore[arg-type]
    )


# --- LevelDB table format ---------------------------------------------------------------------


def _block_handle(buf: bytes, pos: int) -> tuple[tuple[int, int], int]:
    """A BlockHandle is two varints: (offset, size) → ((offset, size), position after)."""
    offset, pos = _varint(buf, pos)
    size, pos = _varint(buf, pos)
    return (offset, size), pos


def _read_block(table: bytes, handle: tuple[int, int]) -> bytes:
    offset, size = handle
    end = offset + size
    if end + _BLOCK_TRAILER_BYTES > len(table):
        raise CheckpointFormatError("block runs past the end of the index file")
    compression = table[end]
    if compression == 1:
        raise CheckpointFormatError("index block is snappy-compressed; only raw blocks are read")
    if compression != 0:
        raise CheckpointFormatError(f"unknown block compression type {compression}")
    return table[offset:end]


def _block_entries(block: bytes) -> list[tuple[bytes, bytes]]:
    """Decode a block's (key, value) pairs; keys share prefixes with the key before them."""
    if len(block) < 4:
        raise CheckpointFormatError("block too short")
    (n_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    entries_end = len(block) - 4 * (n_restarts + 1)
    entries: list[tuple[bytes, bytes]] = []
    key = b""
    pos = 0
    while pos < entries_end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        value_len, pos = _varint(block, pos)
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        entries.append((key, block[pos : pos + value_len]))
        pos += value_len
    return entries


def _table_entries(table: bytes) -> list[tuple[bytes, bytes]]:
    """All (key, value) pairs of a table, walking the index block to each data block."""
    if len(table) < _FOOTER_BYTES:
        raise CheckpointFormatError("index file shorter than a table footer")
    footer = table[-_FOOTER_BYTES:]
    (magic,) = struct.unpack_from("<Q", footer, _FOOTER_BYTES - 8)
    if magic != _TABLE_MAGIC:
        raise CheckpointFormatError("not a LevelDB table (bad magic number)")
    _metaindex, pos = _block_handle(footer, 0)
    index_handle, _ = _block_handle(footer, pos)
    entries: list[tuple[bytes, bytes]] = []
    for _, handle_bytes in _block_entries(_read_block(table, index_handle)):
        data_handle, _ = _block_handle(handle_bytes, 0)
        entries.extend(_block_entries(_read_block(table, data_handle)))
    return entries


# --- public API -------------------------------------------------------------------------------


def bundle_paths(prefix: str | Path) -> tuple[Path, Path]:
    """(index file, data file) of a bundle; a folder means the empty prefix inside it."""
    if Path(prefix).is_dir():
        prefix = f"{Path(prefix)}/"
    return Path(f"{prefix}.index"), Path(f"{prefix}.data-00000-of-00001")


def read_index(prefix: str | Path) -> dict[str, TensorEntry]:
    """Map each tensor name in the bundle's index to its dtype, shape, offset and byte size."""
    table = bundle_paths(prefix)[0].read_bytes()
    index: dict[str, TensorEntry] = {}
    for key, value in _table_entries(table):
        if key == b"":
            _check_header(value)
            continue
        name = key.decode()
        index[name] = _parse_entry(name, value)
    return index


def _check_header(buf: bytes) -> None:
    """BundleHeaderProto: num_shards=1, endianness=2 (0 little, 1 big)."""
    fields = dict(_proto_fields(buf))
    if int(fields.get(1, 1)) != 1:  # type: ignore[arg-type]
        raise CheckpointFormatError("multi-shard checkpoints are not supported")
    if int(fields.get(2, 0)) != 0:  # type: ignore[arg-type]
        raise CheckpointFormatError("big-endian checkpoints are not supported")


def read_checkpoint(prefix: str | Path) -> dict[str, np.ndarray]:
    """Load every tensor of the bundle at ``prefix`` as a numpy array (native byte order)."""
    data = bundle_paths(prefix)[1].read_bytes()
    tensors: dict[str, np.ndarray] = {}
    for name, entry in read_index(prefix).items():
        if entry.offset + entry.size > len(data):
            raise CheckpointFormatError(f"{name}: bytes run past the end of the data file")
        count = int(np.prod(entry.shape, dtype=np.int64))
        if count * entry.dtype.itemsize != entry.size:
            raise CheckpointFormatError(f"{name}: size {entry.size} does not match its shape")
        flat = np.frombuffer(data, dtype=entry.dtype, count=count, offset=entry.offset)
        tensors[name] = flat.reshape(entry.shape).astype(entry.dtype.newbyteorder("="))
    return tensors


def batch_norm_state(tf: dict[str, np.ndarray], prefix: str, name: str) -> dict[str, np.ndarray]:
    """A TF batch-norm layer's variables under PyTorch ``BatchNorm`` parameter names.

    Parameters
    ----------
    tf : variable name → array, as :func:`read_checkpoint` returns them
    prefix : the PyTorch module's name in the state dict, e.g. ``"midend.0.2"``
    name : the TF layer's name, e.g. ``"batch_normalization_7"``

    Returns
    -------
    dict -- ``<prefix>.weight`` (gamma), ``.bias`` (beta), ``.running_mean``, ``.running_var``
    """
    return {
        f"{prefix}.weight": tf[f"{name}/gamma"],
        f"{prefix}.bias": tf[f"{name}/beta"],
        f"{prefix}.running_mean": tf[f"{name}/moving_mean"],
        f"{prefix}.running_var": tf[f"{name}/moving_variance"],
    }
