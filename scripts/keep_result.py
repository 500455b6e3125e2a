"""Keep a run's results.json under docs/results/ with the commands that produced it and their wall times.

    python scripts/keep_result.py docs/results/beauty_id_only_cpu.json \
        --validation runs/quality/beauty_id_only_cpu/logs/version_0 --fit "recsys-lightning fit ..." \
        --fit-seconds 1533 --results runs/quality/beauty_id_only_cpu/logs/version_1/results.json \
        --test "recsys-lightning test ..." --test-seconds 199

Without --results (a run whose test did not finish) only the validation curve is kept.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def validation_curve(logs: Path) -> list[dict[str, float]]:
    """Every validation row of the run's CSV logs: step, epoch in progress (from 0) and the val/ metrics.

    The epoch lets runs whose steps hold different numbers of users (text rows are longer than ID rows) be set
    side by side at equal passes over the data.
    """
    rows = [r for f in sorted(logs.rglob("metrics.csv")) for r in csv.DictReader(f.open())]
    return [{"step": int(r["step"]), "epoch": int(r["epoch"]),
             **{k: round(float(v), 6) for k, v in r.items() if k.startswith("val/") and v}}
            for r in rows if any(k.startswith("val/") and v for k, v in r.items())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--validation", type=Path, required=True, help="the fit's log folder")
    parser.add_argument("--fit", required=True, help="the fit command")
    parser.add_argument("--fit-seconds", type=float, required=True)
    parser.add_argument("--results", type=Path, help="the test run's results.json")
    parser.add_argument("--test", help="the test command")
    parser.add_argument("--test-seconds", type=float)
    parser.add_argument("--machine", default="2-core CPU (this project's build machine)")
    args = parser.parse_args()
    if args.results and not (args.test and args.test_seconds):
        parser.error("--results needs --test and --test-seconds")
    kept = {"commands": {"fit": args.fit, "test": args.test},
            "wall_seconds": {"fit": args.fit_seconds, "test": args.test_seconds}, "machine": args.machine,
            "validation": validation_curve(args.validation),
            **(json.loads(args.results.read_text()) if args.results else {"metrics": None})}
    args.out.write_text(json.dumps(kept, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
