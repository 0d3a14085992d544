"""Small images of two morphologies for the SSL tests (a helper module, not a test file)."""
from __future__ import annotations

import numpy as np


def stripes_and_dots(n: int = 12, size: int = 32, seed: int = 0) -> np.ndarray:
    """Half stripes, half dots, with noise: two morphologies a network can tell apart."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for i in range(n):
        if i % 2:
            base = 0.5 + 0.4 * np.sin(2 * np.pi * (yy + rng.integers(size)) / 6)
        else:
            base = 0.2 + 0.6 * ((yy % 8 < 3) & (xx % 8 < 3))
        out.append(np.clip(base + rng.normal(0, 0.05, (size, size)), 0, 1))
    return np.asarray(out, dtype=np.float32)
