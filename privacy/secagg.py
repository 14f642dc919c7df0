"""What both sides of secure aggregation (client/secagg.py, server/secagg.py) must agree on: the
mask generator and which arrays travel masked, in which order. Kept below both Flower apps so
neither imports the other."""

from __future__ import annotations

import hashlib

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

COUNTERS = "counters"


def mask_stream(seed: bytes, num_range: int, dimensions_list: list[tuple[int, ...]]) -> list[np.ndarray]:
    """Masks in [0, num_range) for arrays of these shapes, from the whole seed: the ChaCha20
    keystream under SHA-256(seed), read as little-endian 32-bit words. `num_range` is a power of
    2 no larger than 2^32 (config.SecAggConfig), so keeping the low bits leaves them uniform."""
    sizes = [int(np.prod(d, dtype=np.int64)) for d in dimensions_list]
    keystream = Cipher(algorithms.ChaCha20(hashlib.sha256(seed).digest(), bytes(16)), mode=None).encryptor()
    words = np.frombuffer(keystream.update(bytes(4 * sum(sizes))), dtype="<u4").astype(np.int64) & (num_range - 1)
    offsets = np.cumsum([0, *sizes])
    return [words[a:b].reshape(d) for a, b, d in zip(offsets[:-1], offsets[1:], dimensions_list)]


def summed_names(arrays: dict[str, np.ndarray]) -> list[str]:
    """The arrays that travel masked, in the order both sides use."""
    return sorted(k for k, v in arrays.items() if v.dtype.kind == "f")
