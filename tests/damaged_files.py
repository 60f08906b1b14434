"""The broken files users meet, made on purpose (shared by the conversion, planning and io_checks tests)."""
import gzip
import os
import struct


def truncate_half(path):
    """What `truncate -s 50%` is meant to do (an interrupted download or copy): keep the first half of the bytes."""
    os.truncate(path, os.path.getsize(path) // 2)


def corrupt_gzip(path):
    """Flip 32 bytes in the middle of the compressed stream (a damaged disk or transfer): the length is unchanged."""
    data = bytearray(open(path, "rb").read())
    middle = len(data) // 2
    for i in range(middle, min(middle + 32, len(data) - 8)):
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))


def overstate_slices(path):
    """Rewrite a NIfTI-1 .nii.gz with twice as many slices in its header as it holds data for; the gzip stream is
    valid. Returns the promised size (x, y, z)."""
    raw = bytearray(gzip.open(path).read())
    dims = list(struct.unpack("<8h", raw[40:56]))
    dims[3] *= 2
    raw[40:56] = struct.pack("<8h", *dims)
    with gzip.open(path, "wb") as f:
        f.write(bytes(raw))
    return tuple(dims[1:4])


def understate_slices(path):
    """Rewrite a NIfTI-1 .nii.gz with one slice fewer in its header than it holds data for (the converse of
    overstate_slices); the gzip stream is valid. Returns the promised size (x, y, z)."""
    raw = bytearray(gzip.open(path).read())
    dims = list(struct.unpack("<8h", raw[40:56]))
    dims[3] -= 1
    raw[40:56] = struct.pack("<8h", *dims)
    with gzip.open(path, "wb") as f:
        f.write(bytes(raw))
    return tuple(dims[1:4])
