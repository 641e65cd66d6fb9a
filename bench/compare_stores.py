"""Compare two RUN.zarr stores variable by variable: exact equality, except colsum (fp32 atomic adds on
the GPU sum in a varying order), reported as the largest relative difference. `--exact` holds colsum
to bit equality too (two CPU runs, or a refactor that must change nothing).

    python bench/compare_stores.py A.zarr B.zarr [--exact]
"""

import sys

import numpy as np
import zarr
from stamp import stamp  # noqa: E402

stamp()

exact = "--exact" in sys.argv
paths = [a for a in sys.argv[1:] if a != "--exact"]
a, b = zarr.open_group(paths[0], mode="r"), zarr.open_group(paths[1], mode="r")
assert sorted(a.group_keys()) == sorted(b.group_keys()), (sorted(a.group_keys()), sorted(b.group_keys()))
worst, count = 0.0, 0
for name in sorted(a.group_keys()):
    assert sorted(a[name].array_keys()) == sorted(b[name].array_keys()), name
    for var in sorted(a[name].array_keys()):
        x, y = a[name][var][...], b[name][var][...]
        count += 1
        if var == "colsum" and not exact:
            d = float(np.max(np.abs(x - y) / np.maximum(np.abs(y), 1e-12)))
            worst = max(worst, d)
            assert d < 1e-5, (name, var, d)
        else:
            same = np.array_equal(x, y, equal_nan=x.dtype.kind == "f")
            assert same, (name, var)
if exact:
    print(f"stores equal: {count} arrays, every one bit-identical")
else:
    print(
        f"stores equal: every variable identical, colsum within {worst:.1e} relative (atomic summation order)"
    )
