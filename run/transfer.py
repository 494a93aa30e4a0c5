"""The transfer grid in one resumable command: pre-training sources x tasks x seeds x
protocols (full fine-tuning and linear probe), written to results/.

    python run/transfer.py                        # run/transfer.toml, results/ (resumes)
    python run/transfer.py --grid my.toml --results results-mine
    python run/transfer.py --max-cells 4          # at most 4 more cells, then stop
    python run/transfer.py --sources scratch,newton --tasks digits   # a part of the grid
    python run/transfer.py --report               # only rewrite the tables and the plot
    python run/transfer.py --dry-run              # list the cells still to run

Every finished cell is a file under RESULTS/cells/ and is skipped next time, so
an interrupted grid (or one started on another machine) continues where it
stopped; pre-trained backbones are weights-only float32 files under
RESULTS/backbones/.  Writes RESULTS/transfer.json, transfer.md (mean ± std over
seeds) and transfer.png.  The logic is ``minivit.parallel.tools.transfer``.
"""
import argparse
import sys
from pathlib import Path

from minivit.parallel.tools.transfer import ROOT, TransferRunner, describe, load_grid


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--grid", default=str(ROOT / "run" / "transfer.toml"),
                   help="TOML grid file (sections: see minivit/parallel/tools/transfer.py)")
    p.add_argument("--results", default=str(ROOT / "results"),
                   help="folder of the cells, backbones, tables and plot")
    p.add_argument("--work", default=str(ROOT / "runs" / "transfer"),
                   help="folder of the runs' own outputs (logs, metrics, checkpoints)")
    p.add_argument("--max-cells", type=int, default=None,
                   help="run at most N pending cells, then write the tables and stop")
    p.add_argument("--sources", default=None,
                   help="comma-separated: run only the cells of these sources")
    p.add_argument("--tasks", default=None,
                   help="comma-separated: run only the cells of these tasks")
    p.add_argument("--report", action="store_true",
                   help="run nothing: rewrite transfer.json/.md/.png from the finished cells")
    p.add_argument("--dry-run", action="store_true", help="list the pending cells and stop")
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_cells is not None and args.max_cells < 1:
        parser.error(f"--max-cells {args.max_cells}: expected >= 1")
    try:
        grid = load_grid(args.grid)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    only = {}
    for key, names in (("sources", grid.sources), ("tasks", grid.tasks)):
        value = getattr(args, key)
        if value is not None:
            only[key] = value.split(",")
            unknown = sorted(set(only[key]) - set(names))
            if unknown:
                parser.error(f"--{key} {value}: {unknown} not in the grid ({', '.join(names)})")
    runner = TransferRunner(grid, Path(args.results), Path(args.work))
    print(describe(grid, runner), flush=True)
    if args.dry_run:
        for cell in runner.pending(**only)[:args.max_cells]:
            print("  " + "/".join(map(str, cell)))
        return 0
    if not args.report:
        todo = len(runner.pending(**only)[:args.max_cells])
        from tqdm import tqdm
        # a bar on a terminal only: logs and nohup files get one line per cell
        with tqdm(total=todo, unit="cell", disable=not sys.stderr.isatty()) as bar:
            try:
                runner.run(args.max_cells, progress=bar, **only)
            except RuntimeError as exc:
                runner.write_tables()
                print(f"transfer.py: a run failed; finished cells are kept:\n{exc}",
                      file=sys.stderr)
                return 1
    records = runner.write_tables()
    print(f"{describe(grid, runner)}\nwrote {args.results}/transfer.json, transfer.md and "
          f"transfer.png ({len(records)} source x task x protocol records)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
