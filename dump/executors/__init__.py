"""Where the documents of a plan run, each executor a small unit over `dump.document.dump_document`:
`local` (this process, one device), `devices` (one process per device), `cluster` (one Dask task
per document on an existing scheduler's workers)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DumpSummary:
    path: str
    documents: int
    skipped: int
    tokens: int
    seconds: float
    store_bytes: int
    retrieved: int

    def line(self) -> str:
        rate = self.tokens / self.seconds if self.seconds > 0 else 0.0
        return (
            f"dump: {self.documents} documents written ({self.skipped} already done), "
            f"model answered (full cache) {self.retrieved}/{self.documents}, "
            f"{rate:,.0f} tokens/s, store {self.store_bytes / 2**20:,.1f} MiB at {self.path}"
        )

    def lines(self) -> list[str]:
        """`line()`, then MB per document and of its largest variables per length (a local store)."""
        from dump.store import sizes_line

        return [self.line(), *filter(None, [sizes_line(self.path)])]
