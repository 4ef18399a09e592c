"""A mutation score from a seeded sample of mutmut's mutants (CONTRIBUTING.md, "Mutation testing").

mutmut makes thousands of mutants of the five modules of `[tool.mutmut]` (4,833 at the time of writing), hours
on 2 cores. This runs a seeded random sample of them instead and reports each module's score with a 95% Wilson
interval, so the score is measured in the time a developer has, and says how sure it is:

    mutmut run --max-children 1 "resetassay.stats.summary.x_k_at__mutmut_1"   # once: generates every mutant
    python scripts/mutation_sample.py --per-module 60 [--seed 0] [--run]        # sample, run, score
    python scripts/mutation_sample.py --per-module 40 --seed 2 --exclude-seeds 0 1 --run  # a fresh sample
    python scripts/mutation_sample.py --survivors                               # the sample's survivors as diffs
    python scripts/mutation_sample.py --all --survivors                         # every mutant run so far

Mutants that change only what a `raise` or a warning (`warn_user(...)`, `warnings.warn(...)`) says (its message or
its arguments), not whether it happens, are left out of the sample and counted apart: they cannot change a number or
lose a result, which is what the audit is for (the bad-input tables test the messages that matter). `--run` runs the
sampled mutants not yet run (`mutmut run NAMES`); without it the score is read from what mutmut has recorded
(mutants/*.meta).
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import random
import subprocess
import sys
from pathlib import Path

MUTANTS = Path("mutants")
KILLED = {1, 3, 36, -24, 24, 152, 255, 37}  # mutmut's exit codes of a test failing, a timeout or a type-check kill
SURVIVED = {0, 5, 33}  # no test failed, or no test reaches the mutant (mutmut's "no tests")


def _functions(source_file: Path) -> dict[str, ast.AST]:
    """Every function of a mutmut-generated module by its (mangled) name, methods included."""
    return {node.name: node for node in ast.walk(ast.parse(source_file.read_text()))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}


def _without_messages(fn: ast.AST) -> str:
    """The function's AST with the argument of every `raise` and of every `*.warn(...)` call blanked."""
    fn = ast.parse(ast.unparse(fn))

    class Blank(ast.NodeTransformer):
        def visit_Raise(self, node: ast.Raise) -> ast.Raise:
            if isinstance(node.exc, ast.Call):
                node.exc.args, node.exc.keywords = [], []
            return node

        def visit_Call(self, node: ast.Call) -> ast.Call:
            self.generic_visit(node)
            if (isinstance(node.func, ast.Attribute) and node.func.attr in ("warn", "warning")) or (
                    isinstance(node.func, ast.Name) and node.func.id == "warn_user"):
                node.args, node.keywords = [], []
            return node

    body = Blank().visit(fn).body[0]
    body.name = "f"
    return ast.dump(body)


def mutants() -> dict[str, list[tuple[str, bool]]]:
    """Per module: (mutant name, message-only) for every mutant mutmut generated."""
    out: dict[str, list[tuple[str, bool]]] = {}
    for meta in sorted(MUTANTS.glob("resetassay/**/*.py.meta")):
        module_file = meta.with_suffix("")
        module = ".".join(module_file.relative_to(MUTANTS).with_suffix("").parts)
        functions = _functions(module_file)
        rows = []
        for name in json.loads(meta.read_text())["exit_code_by_key"]:
            mangled = name[len(module) + 1:]
            orig = functions.get(mangled.rsplit("__mutmut_", 1)[0] + "__mutmut_orig")
            mutant = functions.get(mangled)
            message_only = orig is not None and mutant is not None and _without_messages(orig) == _without_messages(
                mutant)
            rows.append((name, message_only))
        out[module] = rows
    return out


def sample(per_module: int, seed: int, exclude: tuple[int, ...] = ()) -> dict[str, list[str]]:
    """A seeded sample of `per_module` mutants of each module, message-only mutants left out, and so are the mutants
    that the samples of the `exclude` seeds (same size) hold, so that a new sample measures tests it did not shape."""
    every = mutants()
    taken = {n for s in exclude for names in sample(per_module, s).values() for n in names}
    rng = random.Random(seed)
    return {module: sorted(rng.sample(names, min(per_module, len(names))))
            for module, rows in every.items()
            for names in [[n for n, message in rows if not message and n not in taken]]}


def recorded() -> dict[str, int | None]:
    """mutmut's exit code per mutant run so far (None: not run)."""
    codes: dict[str, int | None] = {}
    for meta in MUTANTS.glob("resetassay/**/*.py.meta"):
        codes |= json.loads(meta.read_text())["exit_code_by_key"]
    return codes


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson interval of k successes in n."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-module", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--exclude-seeds", type=int, nargs="*", default=[],
                        help="leave out the mutants of these seeds' samples (a fresh, out-of-sample measurement)")
    parser.add_argument("--all", action="store_true",
                        help="every mutant instead of a sample: the score of what mutmut has run so far, e.g. after "
                             "`mutmut run \"resetassay.stats.summary*\"`")
    parser.add_argument("--run", action="store_true", help="run the sampled mutants not yet run")
    parser.add_argument("--survivors", action="store_true", help="print each survivor of the sample as a diff")
    args = parser.parse_args()
    if not MUTANTS.is_dir():
        sys.exit("no mutants/ here: run `mutmut run` once from the repository root to generate them")
    picked = sample(sys.maxsize if args.all else args.per_module, args.seed, tuple(args.exclude_seeds))
    if args.run:
        todo = [n for names in picked.values() for n in names if recorded().get(n) not in KILLED | SURVIVED]
        if todo:
            subprocess.run(["mutmut", "run", "--max-children", "1", *todo], check=False)
    codes = recorded()
    every = mutants()
    print("| module | mutants | message-only (left out) | sampled | run | killed | survived | score [95% interval] |")
    print("|---|---|---|---|---|---|---|---|")
    survivors = []
    for module, names in picked.items():
        run = [n for n in names if codes.get(n) in KILLED | SURVIVED]
        killed = sum(codes[n] in KILLED for n in run)
        lived = [n for n in run if codes[n] in SURVIVED]
        survivors += lived
        lo, hi = wilson(killed, killed + len(lived))
        score = killed / (killed + len(lived)) if killed + len(lived) else math.nan
        print(f"| {module} | {len(every[module])} | {sum(m for _, m in every[module])} | {len(names)} | {len(run)} | "
              f"{killed} | {len(lived)} | {score:.0%} [{lo:.0%}, {hi:.0%}] |")
    if args.survivors:
        for name in survivors:
            print(subprocess.run(["mutmut", "show", name], capture_output=True, text=True, check=False).stdout)
    else:
        print("\nsurvivors:", " ".join(survivors) or "none")


if __name__ == "__main__":
    main()
