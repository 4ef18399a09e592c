"""What `import resetassay` costs over `import torch`, one run, each in a fresh interpreter (issue: notebooks).

Times, best of --repeat fresh processes (the OS file cache is warm after the first):
  torch      python -c "import torch"
  package    python -c "import resetassay"                  (lazy: loads the public names on first use)
  api        python -c "import resetassay as ra; ra.assay_model; ra.run_assay; ra.AssayResult"
  report     python -c "import resetassay.report"           (pandas, matplotlib, seaborn; no torch)
  cli-help   resetassay --help
and prints each one's excess over torch. The target: `api` at most 0.5 s over `torch`.

    python benchmarks/import_time.py [--repeat 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time

CASES = {
    "torch": [sys.executable, "-c", "import torch"],
    "package": [sys.executable, "-c", "import resetassay"],
    "api": [sys.executable, "-c", "import resetassay as ra; ra.assay_model; ra.run_assay; ra.AssayResult"],
    "report": [sys.executable, "-c", "import resetassay.report"],
    "cli-help": [shutil.which("resetassay") or "resetassay", "--help"],
}
TARGET = 0.5  # seconds over `import torch` for the API


def best_time(command: list[str], repeat: int) -> float:
    """The fastest of `repeat` wall times of `command` in a fresh process."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", help="write the seconds per case here")
    args = parser.parse_args()
    subprocess.run(CASES["torch"], check=True)  # warm the file cache
    seconds = {name: best_time(command, args.repeat) for name, command in CASES.items()}
    base = seconds["torch"]
    for name, value in seconds.items():
        print(f"{name:9s} {value:6.2f} s  ({value - base:+.2f} s over import torch)")
    verdict = "within" if seconds["api"] - base <= TARGET else "OVER"
    print(f"the API costs {seconds['api'] - base:+.2f} s over torch: {verdict} the {TARGET} s target")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seconds": seconds, "api_over_torch": seconds["api"] - base, "target": TARGET}, f, indent=1)


if __name__ == "__main__":
    main()
