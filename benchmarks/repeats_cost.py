"""What repeats cost: the same sweep with ``search.seeds`` 1 and 2 (and more with ``--seeds``), timed side by side.

Each sweep is ``nrd-bench tune`` in its own process (its own local Ray, as a user runs it) on the same prepared
synthetic shards (the demo's data, prepared once, not timed), with the space given (default: the demo's,
``tune_spaces/smoke.yaml``) changed only in ``search.seeds``; the sweeps run one after another, the order
alternating over ``--rounds``. The wall time of each sweep includes Ray's start. Also reported: seconds per trial,
and what the repeats add against one seed (absolute and as a ratio). Writes ``repeats_cost.json`` (settings,
versions, commit) and ``repeats_cost.csv`` to ``--out-dir``.
Run: ``python benchmarks/repeats_cost.py [--space tune_spaces/smoke.yaml] [--seeds 1 2] [--rounds 1]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from nrd.data import create_dataset, prepare_shards
from pipeline.commands.demo import SYNTHETIC
from pipeline.training.tracking import git_commit

ROOT = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", type=Path, default=ROOT / "tune_spaces" / "smoke.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=1, help="sweeps per seed count (order alternating)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    return parser.parse_args()


def sweep(space: dict, seeds: int, shards: Path, work: Path, name: str) -> dict:
    """One ``nrd-bench tune`` of ``space`` with ``search.seeds: seeds``; its wall time and trial count."""
    changed = {**space, "search": {**space["search"], "seeds": seeds}}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(changed, sort_keys=False))
    command = [sys.executable, "-m", "pipeline.cli", "tune", "--space", str(path), "--dataset-dir", str(shards)]
    command += ["--storage-path", str(work / "results"), "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}"]
    command += ["--name", name]
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return {"seeds": seeds, "trials": summary["trials"], "wall_s": round(seconds, 1), "tune_s": summary["seconds"]}


def main() -> None:
    args = parse_args()
    space = yaml.safe_load(args.space.read_text())
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        shards = work / "shards"
        dataset = create_dataset("synthetic", **SYNTHETIC)  # the demo's data
        prepare_shards(dataset, shards, progress=False)
        for round_index in range(args.rounds):
            order = args.seeds if round_index % 2 == 0 else list(reversed(args.seeds))
            for seeds in order:
                row = sweep(space, seeds, shards, work, f"seeds{seeds}-round{round_index}")
                rows.append({"round": round_index, **row, "s_per_trial": round(row["wall_s"] / row["trials"], 1)})
                print(json.dumps(rows[-1]), file=sys.stderr)
    one = [row["wall_s"] for row in rows if row["seeds"] == min(args.seeds)]
    baseline = sum(one) / len(one)
    for row in rows:
        row["added_s"] = round(row["wall_s"] - baseline, 1)
        row["ratio"] = round(row["wall_s"] / baseline, 2)
    settings = {
        "space": str(args.space.relative_to(ROOT)) if args.space.is_relative_to(ROOT) else str(args.space),
        "seeds": args.seeds,
        "rounds": args.rounds,
        "data": {key: list(value) if isinstance(value, tuple) else value for key, value in SYNTHETIC.items()},
        "baseline": f"mean wall time of the sweeps with {min(args.seeds)} seed(s)",
    }
    versions = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    result = {"settings": settings, "versions": versions, "commit": git_commit(), "rows": rows}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "repeats_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    with open(args.out_dir / "repeats_cost.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for row in rows:
        print(
            f"seeds {row['seeds']}: {row['trials']} trials, {row['wall_s']} s ({row['s_per_trial']} s/trial), "
            f"+{row['added_s']} s, {row['ratio']}x one seed"
        )


if __name__ == "__main__":
    main()
