"""Validation curves of kept runs (docs/results/*.json, scripts/keep_result.py) as one SVG line chart.

    python scripts/plot_curves.py --metric val/sequential/ndcg@10 --out docs/results/beauty_cpu_val.svg \
        "ID-only=docs/results/beauty_id_only_cpu.json" "RecSysLLM=docs/results/beauty_cpu.json"

Written as plain SVG so the docs need no plotting library.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

WIDTH, HEIGHT, MARGIN = 640, 360, 60
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def curve(kept: Path, metric: str) -> list[tuple[int, float]]:
    """(step, value) of `metric` in a kept run's validation rows."""
    points = [(row["step"], row[metric]) for row in json.loads(kept.read_text())["validation"] if metric in row]
    if not points:
        raise SystemExit(f"{kept}: no validation values of {metric!r}")
    return sorted(points)


def svg(curves: dict[str, list[tuple[int, float]]], metric: str) -> str:
    """A line chart with axes, ticks at the extremes and a legend."""
    steps = [s for c in curves.values() for s, _ in c]
    values = [v for c in curves.values() for _, v in c]
    x_max, y_max = max(steps), max(values) * 1.1 or 1.0

    def xy(step: int, value: float) -> tuple[float, float]:
        return (MARGIN + step / x_max * (WIDTH - 2 * MARGIN), HEIGHT - MARGIN - value / y_max * (HEIGHT - 2 * MARGIN))

    def points(pairs: list[tuple[int, float]]) -> str:
        return " ".join("{:.1f},{:.1f}".format(*xy(s, v)) for s, v in pairs)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" '
             f'font-size="12"><rect width="100%" height="100%" fill="white"/>',
             f'<polyline points="{points([(0, y_max), (0, 0), (x_max, 0)])}" fill="none" stroke="black"/>',
             f'<text x="{WIDTH / 2}" y="{HEIGHT - 15}" text-anchor="middle">training step (max {x_max})</text>',
             f'<text x="15" y="{HEIGHT / 2}" transform="rotate(-90 15 {HEIGHT / 2})" text-anchor="middle">'
             f'{metric}</text>',
             f'<text x="{MARGIN - 5}" y="{MARGIN + 4}" text-anchor="end">{y_max:.3f}</text>',
             f'<text x="{MARGIN - 5}" y="{HEIGHT - MARGIN + 4}" text-anchor="end">0</text>']
    for i, (name, pairs) in enumerate(curves.items()):
        colour = COLOURS[i % len(COLOURS)]
        parts.append(f'<polyline points="{points(pairs)}" fill="none" stroke="{colour}" stroke-width="2"/>')
        parts += ['<circle cx="{:.1f}" cy="{:.1f}" r="3" fill="{}"/>'.format(*xy(s, v), colour) for s, v in pairs]
        best = max(v for _, v in pairs)
        parts.append(f'<text x="{MARGIN + 10}" y="{MARGIN + 16 * i}" fill="{colour}">{name} (best {best:.4f})</text>')
    return "\n".join([*parts, "</svg>\n"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="NAME=KEPT_JSON pairs")
    parser.add_argument("--metric", default="val/sequential/ndcg@10")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    curves = {}
    for run in args.runs:
        name, sep, kept = run.partition("=")
        if not sep:
            raise SystemExit(f"expected NAME=KEPT_JSON, got {run!r}")
        curves[name] = curve(Path(kept), args.metric)
    args.out.write_text(svg(curves, args.metric))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
