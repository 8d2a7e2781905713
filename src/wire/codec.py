"""msgpack + zstd, with optional trained dictionaries, decoded within limits.

``pack``/``unpack`` turn a payload object into bytes and back; ``compress``/
``decompress`` apply the codec. Decompression never produces more than
``Limits.max_decoded_bytes``: a frame that declares a larger content size is
rejected from its header, and a frame that declares none is streamed with a
read bound of the limit plus one byte.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgpack
import zstandard

from wire.errors import DecodeError, LimitError, ValidationError
from wire.limits import DEFAULT_LIMITS, Limits

CODEC_NONE = "none"
CODEC_ZSTD = "zstd"
CODECS = (CODEC_NONE, CODEC_ZSTD)
DEFAULT_LEVEL = 3
#: zstd frame magic number, little-endian on the wire.
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def pack(obj: Any) -> bytes:
    """msgpack with bin for bytes and str for text (use_bin_type)."""
    try:
        return msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValidationError(f"cannot msgpack-encode payload: {exc}") from exc


def unpack(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Decode msgpack with every container and string length bounded by ``limits``."""
    if len(data) > limits.max_decoded_bytes:
        raise LimitError(f"msgpack payload of {len(data)} bytes exceeds {limits.max_decoded_bytes}")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_bin_len=limits.max_field_bytes,
            max_str_len=limits.max_field_bytes,
            max_array_len=limits.max_records,
            max_map_len=limits.max_map_entries,
            max_ext_len=0,
        )
    except msgpack.ExtraData as exc:
        raise DecodeError("msgpack payload has trailing bytes") from exc
    except ValueError as exc:
        # msgpack reports exceeded max_*_len as ValueError too.
        if "exceeds max" in str(exc):
            raise LimitError(f"msgpack field too large: {exc}") from exc
        raise DecodeError(f"malformed msgpack: {exc}") from exc
    except (msgpack.UnpackException, TypeError, RecursionError) as exc:
        raise DecodeError(f"malformed msgpack: {exc}") from exc


class Dictionaries:
    """Trained zstd dictionaries, known by their zstd dictionary id.

    Dictionaries are trained from sample payloads (:func:`train_dictionary`)
    and stored as ``<id>.zdict`` files; both ends must hold the same ones.
    """

    def __init__(self, dicts: Iterable[bytes] = ()) -> None:
        self._raw: dict[int, bytes] = {}
        self._local = threading.local()
        for d in dicts:
            self.add(d)

    def add(self, data: bytes) -> int:
        d = zstandard.ZstdCompressionDict(data)
        dict_id = d.dict_id()
        if dict_id == 0:
            raise ValidationError("not a trained zstd dictionary (dictionary id 0)")
        self._raw[dict_id] = bytes(data)
        return dict_id

    def __contains__(self, dict_id: object) -> bool:
        return dict_id in self._raw

    def ids(self) -> list[int]:
        return sorted(self._raw)

    def raw(self, dict_id: int) -> bytes:
        try:
            return self._raw[dict_id]
        except KeyError:
            raise DecodeError(f"unknown zstd dictionary id {dict_id}") from None

    def zstd_dict(self, dict_id: int) -> zstandard.ZstdCompressionDict:
        cache: dict[int, zstandard.ZstdCompressionDict] = _thread_cache(self._local, "dicts")
        d = cache.get(dict_id)
        if d is None:
            d = cache[dict_id] = zstandard.ZstdCompressionDict(self.raw(dict_id))
        return d

    def save(self, directory: Path) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for dict_id, data in self._raw.items():
            p = directory / f"{dict_id}.zdict"
            p.write_bytes(data)
            paths.append(p)
        return paths

    @classmethod
    def load_dir(cls, directory: Path, max_bytes: int = 1024 * 1024) -> Dictionaries:
        out = cls()
        for p in sorted(directory.glob("*.zdict")):
            if p.stat().st_size > max_bytes:
                raise ValidationError(f"{p}: dictionary larger than {max_bytes} bytes")
            out.add(p.read_bytes())
        return out


NO_DICTIONARIES = Dictionaries()


def train_dictionary(samples: list[bytes], size: int = 16 * 1024) -> bytes:
    """Train a zstd dictionary from sample payloads (packed, uncompressed)."""
    if len(samples) < 8:
        raise ValidationError(f"need at least 8 samples to train a dictionary, got {len(samples)}")
    try:
        return zstandard.train_dictionary(size, list[bytes | bytearray | memoryview](samples)).as_bytes()
    except zstandard.ZstdError as exc:
        raise ValidationError(f"zstd dictionary training failed: {exc}") from exc


def _thread_cache(local: threading.local, name: str) -> dict[Any, Any]:
    cache = getattr(local, name, None)
    if cache is None:
        cache = {}
        setattr(local, name, cache)
    return cache


_local = threading.local()


def _compressor(level: int, dict_id: int | None, dicts: Dictionaries) -> zstandard.ZstdCompressor:
    cache = _thread_cache(_local, "cctx")
    key = (level, dict_id, id(dicts))
    c = cache.get(key)
    if c is None:
        d = dicts.zstd_dict(dict_id) if dict_id is not None else None
        c = cache[key] = zstandard.ZstdCompressor(
            level=level, dict_data=d, write_content_size=True, write_checksum=False
        )
    return c


def _decompressor(dict_id: int | None, dicts: Dictionaries) -> zstandard.ZstdDecompressor:
    cache = _thread_cache(_local, "dctx")
    key = (dict_id, id(dicts))
    c = cache.get(key)
    if c is None:
        d = dicts.zstd_dict(dict_id) if dict_id is not None else None
        c = cache[key] = zstandard.ZstdDecompressor(dict_data=d)
    return c


def compress(
    data: bytes,
    codec: str = CODEC_ZSTD,
    *,
    dict_id: int | None = None,
    dicts: Dictionaries = NO_DICTIONARIES,
    level: int = DEFAULT_LEVEL,
) -> bytes:
    if codec == CODEC_NONE:
        if dict_id is not None:
            raise ValidationError("codec 'none' takes no dictionary")
        return data
    if codec != CODEC_ZSTD:
        raise ValidationError(f"unknown codec {codec!r}; expected one of {CODECS}")
    if dict_id is not None and dict_id not in dicts:
        raise ValidationError(f"unknown zstd dictionary id {dict_id}")
    return _compressor(level, dict_id, dicts).compress(data)


def decompress(
    data: bytes,
    codec: str,
    *,
    dict_id: int | None = None,
    dicts: Dictionaries = NO_DICTIONARIES,
    limits: Limits = DEFAULT_LIMITS,
) -> bytes:
    """Undo :func:`compress`, never producing more than ``limits.max_decoded_bytes``."""
    if len(data) > limits.max_encoded_bytes:
        raise LimitError(f"payload of {len(data)} bytes exceeds {limits.max_encoded_bytes}")
    if codec == CODEC_NONE:
        if dict_id is not None:
            raise DecodeError("codec 'none' with a dictionary id")
        if len(data) > limits.max_decoded_bytes:
            raise LimitError(f"payload of {len(data)} bytes exceeds {limits.max_decoded_bytes}")
        return bytes(data)
    if codec != CODEC_ZSTD:
        raise DecodeError(f"unknown codec {codec!r}")
    if dict_id is not None and dict_id not in dicts:
        raise DecodeError(f"unknown zstd dictionary id {dict_id}")
    if data[:4] != _ZSTD_MAGIC:
        raise DecodeError("payload is not a zstd frame")
    limit = limits.max_decoded_bytes
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as exc:
        raise DecodeError(f"bad zstd frame header: {exc}") from exc
    dctx = _decompressor(dict_id, dicts)
    try:
        if declared > limit:
            raise LimitError(f"zstd frame declares {declared} bytes, limit is {limit}")
        if declared >= 0:
            out = dctx.decompress(data)
            if len(out) != declared:
                raise DecodeError("zstd frame size differs from its header")
            return out
        # No declared size: stream, reading at most limit + 1 bytes.
        chunks = []
        total = 0
        with dctx.stream_reader(io.BytesIO(data), read_across_frames=False) as reader:
            while True:
                chunk = reader.read(min(1 << 20, limit + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
                if total > limit:
                    raise LimitError(f"zstd frame decodes to more than {limit} bytes")
        return b"".join(chunks)
    except zstandard.ZstdError as exc:
        raise DecodeError(f"corrupt zstd frame: {exc}") from exc
