"""What a RUN store costs on disk: MB per document of every variable, per length, and the total.

    python bench/store_bench.py RUN.zarr [RUN.zarr ...]

Last line per store and length: `store_mb_per_doc N MB` (N = tokens). The dump prints the same
figures, largest variables first, after each run (`dump.store.bytes_per_document`)."""

from __future__ import annotations

import sys

from stamp import stamp

from dump.store import bytes_per_document


def main(paths: list[str]) -> int:
    for path in paths:
        for n, sizes in bytes_per_document(path).items():
            print(f"{path}, {n} tokens: MB per document")
            for var, b in sizes.items():
                print(f"  {var:<18} {b / 1e6:10.3f}")
            print(f"store_mb_per_doc {n} {sum(sizes.values()) / 1e6:.3f}")
    return 0


if __name__ == "__main__":
    stamp()
    sys.exit(main(sys.argv[1:]))
