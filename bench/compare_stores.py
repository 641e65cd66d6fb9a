"""Compare two RUN.zarr stores variable by variable: exact equality, except colsum (fp32 atomic adds on
the GPU sum in a varying order), reported as the largest relative difference."""

import sys

import numpy as np
import zarr

a, b = zarr.open_group(sys.argv[1], mode="r"), zarr.open_group(sys.argv[2], mode="r")
worst = 0.0
for name in sorted(a.group_keys()):
    for var in sorted(a[name].array_keys()):
        x, y = a[name][var][...], b[name][var][...]
        if var == "colsum":
            d = float(np.max(np.abs(x - y) / np.maximum(np.abs(y), 1e-12)))
            worst = max(worst, d)
            assert d < 1e-5, (name, var, d)
        else:
            assert np.array_equal(x, y), (name, var)
print(f"stores equal: every variable identical, colsum within {worst:.1e} relative (atomic summation order)")
