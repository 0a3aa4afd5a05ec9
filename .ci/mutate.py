#!/usr/bin/env python3
"""Mutation testing for Chanhub: does the test suite notice when a check is lost?

Theory of operation
-------------------
For every target module the tool parses the source with `ast` and lists the small
changes ("mutants") a careless edit or a bad merge could make:

- a comparison moved by one (`<` <-> `<=`, `>` <-> `>=`) or flipped (`==` <-> `!=`,
  `is` <-> `is not`, `in` <-> `not in`);
- an integer constant moved by one (`N` -> `N + 1`, `N` -> `N - 1`);
- `not` removed, or added in front of an `if`/`while` condition;
- `and` <-> `or`;
- a statement deleted: a `raise`, an `assert`, an early `return` (one inside an
  `if`), a bare call statement (a `check_...(x)` whose only job is to raise);
- `True` <-> `False` (except `slots=`, which changes memory layout only).

Each mutant is applied, one at a time, to a PRIVATE COPY of the work tree (one copy
per job, made in a temporary directory), and the tests mapped to that module run there
(`pytest -x -q`, HYPOTHESIS_PROFILE=dev, a fixed --hypothesis-seed, a per-mutant
timeout). The shared work tree is never written: other engineers run tests in it.

A mutant is *killed* when the tests fail (or the mutated module no longer imports),
*timeout* when they do not finish in time (counted as detected: a hang is noticed),
*survived* when they pass. A surviving mutant is a check the suite does not pin down:
kill it with a test at the boundary, or, when the change cannot alter behaviour, list
it as *equivalent* in `.ci/mutants-equivalent.txt` with the reason:

    channel/sweep.py:120:15: `<` -> `<=`  # both sides are distinct multiples of 8

(the key is `file:line:col: mutation`, exactly as the report prints it; everything
after `#` is the reason, which is required). Entries that no longer match any mutant
are reported as stale, so the list cannot silently rot when code moves.

Mutated source is produced by replacing the source span of one AST node with the
unparsed mutated node, wrapped in parentheses and padded with newlines so every other
line keeps its number (tracebacks and the report stay readable). A mutant whose source
does not compile is dropped, never counted.

Before any mutant, each distinct test set runs once on the unmutated copy: if that
baseline fails (someone's half-finished work, say), its modules are reported as
"baseline failed" and skipped, since no mutant result would mean anything.

Usage: python .ci/mutate.py --paths channel protocol --sample 200 --seed 1 --report r.md
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import dataclasses
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EQUIVALENT_FILE = REPO / ".ci" / "mutants-equivalent.txt"

# Which tests guard which code: the longest matching prefix wins. `--tests` overrides.
TEST_MAP: dict[str, tuple[str, ...]] = {
    "channel/chain/": ("tests/chain",),
    "channel/": ("tests/channel",),
    "protocol/driver/": ("tests/protocol",),
    "protocol/": ("tests/protocol",),
    "regtest/node/": ("tests/regtest",),
    "regtest/": ("tests/regtest", "tests/integration"),
}

# Never copied into the private tree: version control, the venv (used in place),
# caches, hypothesis' example database (a stale failing example would make runs
# order-dependent).
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache",
    ".hypothesis", "*.pyc", "*.egg-info",
)

NO_MUTATE_PRAGMA = "pragma: no mutate"

# Keyword arguments whose value changes memory layout only (equivalent by nature).
_LAYOUT_ONLY_KEYWORDS = frozenset({"slots"})

_MOVE_BY_ONE: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
}
_FLIP: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
    ast.In: ast.NotIn, ast.NotIn: ast.In,
}
_OP_TEXT: dict[type[ast.cmpop], str] = {
    ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==",
    ast.NotEq: "!=", ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in",
}


@dataclasses.dataclass(frozen=True)
class Mutant:
    path: str  # relative to the repository, forward slashes
    line: int
    col: int
    description: str
    source: str  # the whole mutated module

    @property
    def key(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.description}"


@dataclasses.dataclass
class Result:
    mutant: Mutant
    outcome: str  # killed | survived | timeout | equivalent
    seconds: float


# --------------------------------------------------------------------------- mutants


class _SourceText:
    """Maps AST positions (line, UTF-8 byte column) to offsets in the source text."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines = source.splitlines(keepends=True)
        self.starts: list[int] = []
        offset = 0
        for line in self.lines:
            self.starts.append(offset)
            offset += len(line)
        self.starts.append(offset)

    def offset(self, line: int, byte_col: int) -> int:
        text = self.lines[line - 1] if line - 1 < len(self.lines) else ""
        char_col = len(text.encode("utf-8")[:byte_col].decode("utf-8", errors="replace"))
        return self.starts[line - 1] + char_col

    def replace(self, node: ast.AST, replacement: str, *, wrap: bool) -> str:
        start = self.offset(node.lineno, node.col_offset)  # type: ignore[attr-defined]
        end_line: int = node.end_lineno  # type: ignore[attr-defined]
        end = self.offset(end_line, node.end_col_offset)  # type: ignore[attr-defined]
        padding = "\n" * (end_line - node.lineno)  # type: ignore[attr-defined]
        new = f"({replacement}{padding})" if wrap else replacement + padding
        return self.source[:start] + new + self.source[end:]


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Collector:
    """Walks one module and yields (node, replacement, wrap, description) candidates."""

    def __init__(self, tree: ast.Module, text: _SourceText) -> None:
        self.tree = tree
        self.text = text
        self.found: list[tuple[ast.AST, str, bool, str]] = []

    def _pragma(self, node: ast.AST) -> bool:
        line = getattr(node, "lineno", None)
        return line is not None and NO_MUTATE_PRAGMA in self.text.lines[line - 1]

    def add(self, node: ast.AST, replacement: str, wrap: bool, description: str) -> None:
        if not self._pragma(node):
            self.found.append((node, replacement, wrap, description))

    def walk(self, node: ast.AST, *, in_if_body: bool = False) -> None:
        if isinstance(node, ast.JoinedStr):
            return  # positions inside f-strings are unreliable before 3.12
        if isinstance(node, ast.If) and _is_type_checking(node):
            return
        if isinstance(node, ast.AnnAssign):
            if node.value is not None:
                self.walk(node.value)
            return
        if isinstance(node, ast.keyword) and node.arg in _LAYOUT_ONLY_KEYWORDS:
            return  # e.g. @dataclass(slots=True): memory layout, no behaviour to test
        self.visit(node, in_if_body=in_if_body)
        for field, value in ast.iter_fields(node):
            if field in ("annotation", "returns", "type_comment"):
                continue
            children = value if isinstance(value, list) else [value]
            for child in children:
                if isinstance(child, ast.arg):
                    continue  # only annotations live there
                if isinstance(child, ast.AST):
                    body_of_if = isinstance(node, ast.If) and field in ("body", "orelse")
                    self.walk(child, in_if_body=body_of_if)

    def visit(self, node: ast.AST, *, in_if_body: bool) -> None:
        if isinstance(node, ast.Compare):
            for index, op in enumerate(node.ops):
                for table in (_MOVE_BY_ONE, _FLIP):
                    new_op = table.get(type(op))
                    if new_op is None:
                        continue
                    ops = list(node.ops)
                    ops[index] = new_op()
                    mutated = ast.Compare(left=node.left, ops=ops, comparators=node.comparators)
                    self.add(node, ast.unparse(mutated), True,
                             f"`{_OP_TEXT[type(op)]}` -> `{_OP_TEXT[new_op]}`")
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, bool):
                self.add(node, repr(not node.value), True, f"`{node.value}` -> `{not node.value}`")
            elif isinstance(node.value, int):
                for delta in (1, -1):
                    self.add(node, repr(node.value + delta), True,
                             f"`{node.value}` -> `{node.value + delta}`")
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            self.add(node, ast.unparse(node.operand), True,
                     f"`not` removed from `{_short(node)}`")
        elif isinstance(node, ast.BoolOp):
            swapped = ast.BoolOp(op=ast.Or() if isinstance(node.op, ast.And) else ast.And(),
                                 values=node.values)
            names = ("and", "or") if isinstance(node.op, ast.And) else ("or", "and")
            self.add(node, ast.unparse(swapped), True, f"`{names[0]}` -> `{names[1]}`")
        if isinstance(node, ast.If | ast.While) and not (
            isinstance(node.test, ast.UnaryOp) and isinstance(node.test.op, ast.Not)
        ):
            self.add(node.test, f"not ({ast.unparse(node.test)})", True,
                     f"`not` added to `{_short(node.test)}`")
        deletable = (
            isinstance(node, ast.Raise | ast.Assert)
            or (isinstance(node, ast.Return) and in_if_body)  # an early return: a guard
            or (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call | ast.Await))
        )
        if deletable:
            self.add(node, "pass", False, f"`{_short(node)}` deleted")


def _short(node: ast.AST, limit: int = 48) -> str:
    text = " ".join(ast.unparse(node).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def collect_mutants(path: str, source: str) -> list[Mutant]:
    """Every mutant of one module that still compiles, in source order."""
    tree = ast.parse(source)
    text = _SourceText(source)
    collector = _Collector(tree, text)
    collector.walk(tree)
    mutants: list[Mutant] = []
    seen: set[str] = set()
    for node, replacement, wrap, description in collector.found:
        mutated = text.replace(node, replacement, wrap=wrap)
        try:
            compile(mutated, path, "exec")
        except SyntaxError:
            continue
        mutant = Mutant(path, node.lineno, node.col_offset, description, mutated)  # type: ignore[attr-defined]
        if mutant.key not in seen:
            seen.add(mutant.key)
            mutants.append(mutant)
    mutants.sort(key=lambda m: (m.path, m.line, m.col, m.description))
    return mutants


def target_files(paths: list[str]) -> list[str]:
    files: list[str] = []
    for item in paths:
        full = (REPO / item).resolve()
        if full.is_dir():
            files.extend(str(p.relative_to(REPO)) for p in sorted(full.rglob("*.py")))
        elif full.suffix == ".py":
            files.append(str(full.relative_to(REPO)))
        else:
            raise SystemExit(f"mutate: no Python file or directory at {item}")
    return [f.replace(os.sep, "/") for f in files if "__pycache__" not in f]


def tests_for(path: str, override: list[str] | None) -> tuple[str, ...]:
    if override:
        return tuple(override)
    best = max((p for p in TEST_MAP if path.startswith(p)), key=len, default=None)
    if best is None:
        raise SystemExit(f"mutate: no tests mapped to {path}; pass --tests")
    return TEST_MAP[best]


def likely_killers_first(path: str, tests: tuple[str, ...], root: Path) -> tuple[str, ...]:
    """The same tests, as files, those named after the module first (``test_closing*``
    for ``closing.py``): with ``-x`` a mutant is usually killed sooner. Only the
    order changes, never which tests run, so outcomes are the same. Files are listed
    in ``root``, the private copy the tests run in."""
    stem = Path(path).stem
    files: list[str] = []
    for item in tests:
        full = root / item
        if full.is_dir():
            files.extend(str(p.relative_to(root)) for p in sorted(full.rglob("test_*.py")))
        else:
            files.append(item)
    if stem in ("__init__", "errors"):
        return tuple(files)
    return tuple(sorted(files, key=lambda f: stem not in Path(f).stem))


def load_equivalent(file: Path) -> dict[str, str]:
    equivalent: dict[str, str] = {}
    if not file.exists():
        return equivalent
    for number, raw in enumerate(file.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, reason = line.partition("  #")
        if not sep or not reason.strip():
            raise SystemExit(f"{file}:{number}: an equivalent mutant needs `  # reason`")
        equivalent[key.strip()] = reason.strip()
    return equivalent


# --------------------------------------------------------------------------- running


class Workspace:
    """One private copy of the tree; one mutant at a time is written into it."""

    def __init__(self, root: Path, python: str, seed: int) -> None:
        self.root = root
        self.python = python
        self.seed = seed

    @classmethod
    def create(cls, python: str, seed: int) -> Workspace:
        root = Path(tempfile.mkdtemp(prefix="chanhub-mutate-")) / "tree"
        shutil.copytree(REPO, root, ignore=COPY_IGNORE, symlinks=True)
        # The tests read ../shared (test vectors) beside the repository: same beside the copy.
        for sibling in ("shared",):
            if (REPO.parent / sibling).exists():
                (root.parent / sibling).symlink_to(REPO.parent / sibling)
        return cls(root, python, seed)

    def run_tests(
        self, tests: tuple[str, ...], timeout: float, log: Path | None = None
    ) -> tuple[str, float]:
        """'passed' | 'failed' | 'timeout', and the seconds it took (output to `log`)."""
        shutil.rmtree(self.root / ".hypothesis", ignore_errors=True)
        env = dict(os.environ)
        env.update(
            HYPOTHESIS_PROFILE="dev",
            PYTHONPATH=str(self.root),
            PYTHONDONTWRITEBYTECODE="1",
        )
        command = [
            self.python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
            f"--hypothesis-seed={self.seed}", *tests,
        ]
        started = time.monotonic()
        output = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115
        with subprocess.Popen(
            command, cwd=self.root, env=env, stdout=output,
            stderr=subprocess.STDOUT, start_new_session=True,
        ) as process:
            try:
                code = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # its own session: only its children
                process.wait()
                return "timeout", time.monotonic() - started
            finally:
                if log:
                    output.close()  # type: ignore[union-attr]
        elapsed = time.monotonic() - started
        return ("passed" if code == 0 else "failed"), elapsed

    def run_mutant(self, mutant: Mutant, tests: tuple[str, ...], timeout: float) -> Result:
        target = self.root / mutant.path
        original = target.read_text()
        target.write_text(mutant.source)
        try:
            status, seconds = self.run_tests(tests, timeout)
        finally:
            target.write_text(original)
        outcome = {"passed": "survived", "failed": "killed", "timeout": "timeout"}[status]
        return Result(mutant, outcome, seconds)

    def remove(self) -> None:
        shutil.rmtree(self.root.parent, ignore_errors=True)


# --------------------------------------------------------------------------- report


def module_rows(files: list[str], generated: dict[str, int], results: list[Result],
                baseline_failed: set[str]) -> list[str]:
    rows = [
        "| module | mutants | run | killed | timeout | survived | equivalent | kill rate |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    totals = [0, 0, 0, 0, 0, 0]
    for path in files:
        mine = [r for r in results if r.mutant.path == path]
        counts = {o: sum(1 for r in mine if r.outcome == o)
                  for o in ("killed", "timeout", "survived", "equivalent")}
        row = [generated.get(path, 0), len(mine), counts["killed"], counts["timeout"],
               counts["survived"], counts["equivalent"]]
        totals = [a + b for a, b in zip(totals, row, strict=True)]
        if path in baseline_failed:
            rate = "baseline failed"
        else:
            rate = _rate(counts["killed"] + counts["timeout"], counts["survived"])
        rows.append(f"| `{path}` | " + " | ".join(map(str, row)) + f" | {rate} |")
    rows.append("| **total** | " + " | ".join(str(t) for t in totals)
                + f" | {_rate(totals[2] + totals[3], totals[4])} |")
    return rows


def _rate(detected: int, survived: int) -> str:
    if detected + survived == 0:
        return "-"
    return f"{100 * detected / (detected + survived):.1f}%"


def write_report(file: Path, args: argparse.Namespace, files: list[str],
                 generated: dict[str, int], results: list[Result],
                 baseline_failed: set[str], stale: list[str], seconds: float,
                 interrupted: bool = False) -> None:
    lines = [
        "# Mutation report",
        "",
        f"Command: `python .ci/mutate.py {' '.join(sys.argv[1:])}`  ",
        f"Sample: {args.sample or 'all'} (seed {args.seed}); jobs {args.jobs}; "
        f"wall time {seconds / 60:.1f} min"
        + (" (INTERRUPTED: only the mutants run so far are counted)" if interrupted else "")
        + ".  ",
        "Kill rate = (killed + timeout) / (killed + timeout + survived); equivalent "
        "mutants (`.ci/mutants-equivalent.txt`) are not run and not counted.",
        "",
        *module_rows(files, generated, results, baseline_failed),
        "",
        "## Survivors",
        "",
    ]
    survivors = [r for r in results if r.outcome == "survived"]
    if not survivors:
        lines.append("None.")
    for result in survivors:
        m = result.mutant
        original = (REPO / m.path).read_text().splitlines()[m.line - 1].strip()
        lines.append(f"- `{m.key}`  \n  `{original}`")
    if stale:
        lines += ["", "## Stale equivalent entries (no such mutant any more)", ""]
        lines += [f"- `{key}`" for key in stale]
    file.write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- main


def _key_of(line: str) -> str:
    """A mutant key from a line of `SURVIVED key` output, a report's "- `key`" line,
    or a bare key."""
    line = line.strip().removeprefix("SURVIVED ").strip()
    if line.startswith("- `") and line.endswith("`"):
        line = line[3:-1]
    return line


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--paths", nargs="+", default=["channel", "protocol", "regtest/node"],
                        help="files or directories to mutate (relative to the repository)")
    parser.add_argument("--tests", nargs="+", help="test paths to run for every mutant "
                        "(default: the tests mapped to each module)")
    parser.add_argument("--exclude", nargs="*", default=[],
                        help="path prefixes to leave out (e.g. channel/chain/)")
    parser.add_argument("--sample", type=int, default=0,
                        help="run only N mutants, drawn with --seed (0: all)")
    parser.add_argument("--seed", type=int, default=1, help="sampling and hypothesis seed")
    parser.add_argument("--jobs", type=int, default=1, help="parallel private tree copies")
    parser.add_argument("--timeout", type=float, default=0,
                        help="seconds per mutant (default: 4x the baseline run + 10 s)")
    parser.add_argument("--match", default="", help="only mutants whose key contains this")
    parser.add_argument("--keys", type=Path,
                        help="only the mutants whose keys this file lists, one a line (e.g. "
                        "the SURVIVED lines of an earlier run, prefix and all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    parser.add_argument("--report", type=Path, help="write a markdown report here")
    parser.add_argument("--equivalent", type=Path, default=EQUIVALENT_FILE)
    args = parser.parse_args(argv)

    files = [f for f in target_files(args.paths)
             if not any(f.startswith(prefix) for prefix in args.exclude)]
    equivalent = load_equivalent(args.equivalent)
    everything: list[Mutant] = []
    generated: dict[str, int] = {}
    for path in files:
        mutants = collect_mutants(path, (REPO / path).read_text())
        generated[path] = len(mutants)
        everything.extend(mutants)
    keys = {m.key for m in everything}
    stale = sorted(k for k in equivalent if k not in keys
                   and any(k.startswith(f + ":") for f in files))
    chosen = [m for m in everything if args.match in m.key]
    if args.keys:
        wanted = {_key_of(line) for line in args.keys.read_text().splitlines() if line.strip()}
        chosen = [m for m in chosen if m.key in wanted]
    if args.sample and args.sample < len(chosen):
        chosen = sorted(random.Random(args.seed).sample(chosen, args.sample),
                        key=lambda m: (m.path, m.line, m.col, m.description))
    if args.list:
        for m in chosen:
            mark = "  [equivalent]" if m.key in equivalent else ""
            print(m.key + mark)
        print(f"{len(chosen)} of {len(everything)} mutants", file=sys.stderr)
        return 0

    # SIGTERM ends the run like Ctrl-C: queued mutants dropped, private copies removed.
    signal.signal(signal.SIGTERM, _interrupt)
    python = str(REPO / ".venv" / "bin" / "python")
    if not Path(python).exists():
        python = sys.executable
    started = time.monotonic()
    workspaces = [Workspace.create(python, args.seed) for _ in range(max(1, args.jobs))]
    results: list[Result] = []
    baseline_failed: set[str] = set()
    interrupted = False
    try:
        test_sets = sorted({tests_for(m.path, args.tests) for m in chosen})
        timeouts: dict[tuple[str, ...], float] = {}
        for tests in test_sets:
            log = workspaces[0].root.parent / "baseline.log"
            status, seconds = workspaces[0].run_tests(tests, timeout=1800, log=log)
            print(f"baseline {' '.join(tests)}: {status} in {seconds:.1f}s", file=sys.stderr)
            if status != "passed":
                print("".join(log.read_text().splitlines(keepends=True)[-15:]), file=sys.stderr)
                baseline_failed |= {
                    m.path for m in chosen if tests_for(m.path, args.tests) == tests
                }
            timeouts[tests] = args.timeout or 4 * seconds + 10
        runnable = [m for m in chosen if m.path not in baseline_failed]
        for m in runnable:
            if m.key in equivalent:
                results.append(Result(m, "equivalent", 0.0))
        queue = [m for m in runnable if m.key not in equivalent]
        free = list(workspaces)
        lock = threading.Lock()

        def run_one(mutant: Mutant) -> Result:
            with lock:
                workspace = free.pop()
            try:
                tests = tests_for(mutant.path, args.tests)
                ordered = likely_killers_first(mutant.path, tests, workspace.root)
                return workspace.run_mutant(mutant, ordered, timeouts[tests])
            finally:
                with lock:
                    free.append(workspace)

        pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(workspaces))
        try:
            for done, result in enumerate(pool.map(run_one, queue), 1):
                results.append(result)
                print(f"[{done}/{len(queue)}] {result.outcome:8} {result.seconds:5.1f}s "
                      f"{result.mutant.key}", file=sys.stderr, flush=True)
        finally:
            # On Ctrl-C or SIGTERM: drop the queued mutants, let the running ones end.
            pool.shutdown(wait=True, cancel_futures=True)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: reporting the mutants run so far", file=sys.stderr)
    finally:
        for workspace in workspaces:
            workspace.remove()
    elapsed = time.monotonic() - started
    results.sort(key=lambda r: (r.mutant.path, r.mutant.line, r.mutant.col))
    for row in module_rows(files, generated, results, baseline_failed):
        print(row)
    for result in results:
        if result.outcome == "survived":
            print(f"SURVIVED {result.mutant.key}")
    for key in stale:
        print(f"STALE equivalent entry: {key}", file=sys.stderr)
    if args.report:
        write_report(args.report, args, files, generated, results, baseline_failed, stale,
                     elapsed, interrupted)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
