"""Splitting model files into chunks and checking them back together."""

from __future__ import annotations

import hashlib

__all__ = ["DEFAULT_CHUNK_SIZE", "ChunkError", "check_chunk", "reassemble", "sha256_hex", "split"]

DEFAULT_CHUNK_SIZE = 64 * 1024


class ChunkError(ValueError):
    """A chunk or a reassembled file that does not match its expected size or hash."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def split(data: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE) -> list[bytes]:
    """Cut ``data`` into chunks of ``chunk_size`` bytes (the last may be shorter)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if not data:
        raise ValueError("cannot split an empty file")
    return [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]


def check_chunk(index: int, data: bytes, expected_sha256: str) -> None:
    actual = sha256_hex(data)
    if actual != expected_sha256:
        raise ChunkError(
            f"chunk {index}: sha256 {actual[:12]}… does not match the manifest's "
            f"{expected_sha256[:12]}… ({len(data)} bytes)"
        )


def reassemble(
    chunks: list[bytes], *, chunk_hashes: list[str], size: int, sha256: str
) -> bytes:
    """Join chunks after checking each chunk's hash, the total size and the file hash."""
    if len(chunks) != len(chunk_hashes):
        raise ChunkError(f"got {len(chunks)} chunks, the manifest lists {len(chunk_hashes)}")
    for i, (chunk, expected) in enumerate(zip(chunks, chunk_hashes, strict=True)):
        check_chunk(i, chunk, expected)
    data = b"".join(chunks)
    if len(data) != size:
        raise ChunkError(f"model file is {len(data)} bytes, the manifest says {size}")
    actual = sha256_hex(data)
    if actual != sha256:
        raise ChunkError(
            f"model file sha256 {actual[:12]}… does not match the manifest's {sha256[:12]}…"
        )
    return data
