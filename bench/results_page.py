"""Regenerate the parts of docs/results.md that a bench's JSON output holds: each block between
`<!-- from FILE.json -->` and `<!-- end -->` is rewritten from bench/results/FILE.json.

    python bench/results_page.py           # rewrite docs/results.md in place
    python bench/results_page.py --check   # exit 1 if the page and the JSON disagree (a test runs this)
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "results.md"
BLOCK = re.compile(r"(<!-- from (\S+\.json) -->\n)(.*?)(<!-- end -->)", re.S)
NAMES = {"gemma3-270m": "Gemma 3 270M", "smollm2-135m": "SmolLM2 135M"}


def _tokens(n: int, rope) -> str:
    return f"{n // 1024}k" + (f" ({rope})" if rope else "")


def per_length(data: dict) -> str:
    """One table per model: seconds per document (the plain forward's in brackets), MB per document."""
    out = []
    for model in dict.fromkeys(r["model"] for r in data["per_length"]):
        rows = [r for r in data["per_length"] if r["model"] == model]
        out.append(
            f"| {NAMES.get(model, model)} | "
            + " | ".join(_tokens(r["tokens"], r["rope_scaling"]) for r in rows)
            + " |"
        )
        out.append("|---" * (len(rows) + 1) + "|")
        out.append(
            "| s / doc (sdpa) | " + " | ".join(f"{r['doc_s']:.2f} ({r['plain_s']:.2f})" for r in rows) + " |"
        )
        out.append("| MB / doc | " + " | ".join(f"{1000 * r['store_gb_per_doc']:.1f}" for r in rows) + " |")
        out.append("")
    return "\n".join(out) + f"\n({data['card']}, torch {data['torch']})\n"


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def _table(rows: list[dict]) -> list[str]:
    cols = [
        c
        for c in dict.fromkeys(k for r in rows for k in r)
        if all(not isinstance(r.get(c), (list, dict)) for r in rows)
    ]
    out = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    return out + ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows]


def generic(data) -> str:
    """Any bench JSON: its scalar fields on one line, then a table per list (or mapping) of records."""
    if isinstance(data, list):
        data = {"rows": data}
    scalars = {k: v for k, v in data.items() if not isinstance(v, (list, dict))}
    out = ["; ".join(f"{k}: {_cell(v)}" for k, v in scalars.items()), ""]
    for key, value in data.items():
        rows = value if isinstance(value, list) else [value] if isinstance(value, dict) else None
        if rows and all(isinstance(r, dict) for r in rows):
            out += [f"`{key}`:", "", *_table(rows), ""]
    return "\n".join(out)


RENDER = {"per_length_h200.json": per_length}


def render(page: str) -> str:
    def one(m: re.Match) -> str:
        name = m.group(2)
        data = json.loads((ROOT / "bench" / "results" / name).read_text())
        return m.group(1) + RENDER.get(name, generic)(data) + m.group(4)

    return BLOCK.sub(one, page)


def main() -> int:
    page = PAGE.read_text()
    new = render(page)
    if "--check" in sys.argv:
        if new != page:
            print("docs/results.md differs from its JSON: run python bench/results_page.py")
            return 1
        return 0
    PAGE.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
