"""Array type aliases shared by the vectorised matching modules."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["Floats", "IntMatrix", "Ints", "Mask"]

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
IntMatrix = npt.NDArray[np.int64]
"""Integer weights of a matching problem (a square, symmetric matrix)."""
Mask = npt.NDArray[np.bool_]
