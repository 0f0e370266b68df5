"""Draw the import graph of carvq_gguf's layers as docs/import-graph.png.

One box per subpackage (or bottom module), placed by its layer from tests/test_layers.py (the
same table the import-rule test enforces), one arrow per pair of packages that import each other,
labelled with the number of import statements. Every arrow must point down; the script refuses to
draw a graph with an arrow that does not.

    .venv/bin/python scripts/import_graph.py [--out docs/import-graph.png]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from test_layers import LAYERS, PACKAGE, imports, module_name, unit_of  # noqa: E402


def edges() -> tuple[Counter, Counter]:
    """(import statements per (importer, imported) package pair, modules per package)."""
    pairs: Counter = Counter()
    modules: Counter = Counter()
    for path in sorted(PACKAGE.rglob("*.py")):
        source = unit_of(module_name(path))
        if not source:
            continue
        modules[source] += 1
        for _, target in imports(path):
            dest = unit_of(target)
            if dest != source:
                pairs[source, dest] += 1
    modules["patches"] = len(list((REPO / "patches").glob("*.patch")))
    return pairs, modules


def draw(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs, modules = edges()
    up = [(a, b) for a, b in pairs if LAYERS[b] >= LAYERS[a]]
    if up:
        sys.exit(f"arrows that do not point down: {up}")
    rows: dict[int, list[str]] = {}
    for unit, layer in sorted(LAYERS.items(), key=lambda kv: kv[0]):
        rows.setdefault(layer, []).append(unit)
    pos = {}
    for layer, units in rows.items():
        for i, unit in enumerate(units):
            pos[unit] = ((i + 1) / (len(units) + 1) * 10, layer * 1.6)
    fig, ax = plt.subplots(figsize=(11, 9))
    for (a, b), count in pairs.items():
        (x0, y0), (x1, y1) = pos[a], pos[b]
        ax.annotate("", xy=(x1, y1 + 0.25), xytext=(x0, y0 - 0.25),
                    arrowprops=dict(arrowstyle="-|>", color="tab:gray", alpha=0.6, shrinkA=4, shrinkB=4,
                                    connectionstyle="arc3,rad=0.08"))
        ax.text(x0 + 0.3 * (x1 - x0), y0 - 0.25 + 0.3 * (y1 - y0), str(count), fontsize=7, color="tab:gray")
    for unit, (x, y) in pos.items():
        package = (PACKAGE / unit).is_dir()
        label = f"{unit}/" if package or unit == "patches" else f"{unit}.py"
        detail = f"\n{modules[unit]} patches" if unit == "patches" else f"\n{modules[unit]} modules" if package else ""
        ax.text(x, y, label + detail, ha="center", va="center", fontsize=10,
                bbox=dict(boxstyle="round,pad=0.4", facecolor="white", edgecolor="black"))
    for layer in rows:
        ax.text(-0.2, layer * 1.6, f"layer {layer}", ha="right", va="center", fontsize=9, color="tab:blue")
    ax.set_xlim(-1.5, 10.5)
    ax.set_ylim(-0.8, max(rows) * 1.6 + 0.8)
    ax.axis("off")
    ax.set_title("carvq_gguf: who imports whom (arrow from importer to imported; numbers: import statements)\n"
                 "every arrow points down (tests/test_layers.py)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(f"wrote {out}: {len(pairs)} arrows between {len(LAYERS)} packages, none pointing up")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "import-graph.png")
    draw(parser.parse_args().out)


if __name__ == "__main__":
    main()
