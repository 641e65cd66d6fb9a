"""Compare two RESULTS.zarr stores variable by variable, bit for bit (NaN equal to NaN).

    python bench/compare_results.py OLD.results.zarr NEW.results.zarr

A schema-1 store's `method` dimension is read as `policy`, so results made before and after the
rename compare directly (the behaviour-preservation check of the schema change)."""

import sys

import numpy as np
import xarray as xr
from stamp import stamp  # noqa: E402

stamp()

a, b = (xr.open_zarr(p).load() for p in sys.argv[1:3])
a, b = (ds.rename({"method": "policy"}) if "method" in ds.dims else ds for ds in (a, b))
bad = 0
for v in sorted(set(a.data_vars) | set(b.data_vars)):
    if v not in a or v not in b:
        print(f"only in {'the first' if v in a else 'the second'}: {v}")
        continue
    x, y = a[v].values, b[v].values
    same = x.shape == y.shape and np.array_equal(x, y, equal_nan=x.dtype.kind == "f")
    if not same:
        bad += 1
        print(f"differs: {v}")
for c in a.coords:
    if c in b.coords and not np.array_equal(a[c].values, b[c].values):
        bad += 1
        print(f"coordinate differs: {c}")
shared = len(set(a.data_vars) & set(b.data_vars))
print(f"{shared} variables compared, {bad} differ")
sys.exit(1 if bad else 0)
