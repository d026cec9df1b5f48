"""The package's shape, checked on its source: layers import downwards only, one item type, no copied code."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "frankenlab"
#: Analyses and services never reach up to the composition layer (the mini-world, the study, the report).
LOWER = ("probe", "eval", "rl", "merge", "compare", "freeze", "tasks", "runtime", "io", "arch", "grading",
         "checkpoint", "tiny", "synth")
UPPER = ("frankenlab.miniworld", "frankenlab.study", "frankenlab.report", "frankenlab.cli")
WINDOW = 11  # "no two places share more than 10 lines"


def _modules() -> list[tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text(), str(p))) for p in sorted(SRC.rglob("*.py"))]


def _imports(tree: ast.Module) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_lower_layers_never_import_composition():
    bad = [(str(p.relative_to(SRC)), name) for p, tree in _modules()
           if p.relative_to(SRC).parts[0] in LOWER
           for name in _imports(tree) if name.startswith(UPPER)]
    assert not bad, bad


def test_one_task_item_class():
    found = [str(p.relative_to(SRC)) for p, tree in _modules() for node in ast.walk(tree)
             if isinstance(node, ast.ClassDef) and node.name.endswith("Item") and not node.name.startswith("_")]
    assert found == ["tasks/schema.py"], found


def _code_lines(path: Path, tree: ast.Module) -> list[tuple[int, str]]:
    """Stripped source lines, without blanks and comments, outside declarations that cannot drift apart:
    imports, ``__all__`` lists, docstrings and function signatures (typer commands share option lists)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) or (
                isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets)):
            skip.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            start = min([d.lineno for d in node.decorator_list] + [node.lineno])
            skip.update(range(start, first.lineno))
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(
                getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            skip.update(range(body[0].lineno, (body[0].end_lineno or body[0].lineno) + 1))
    lines = path.read_text().splitlines()
    return [(i + 1, s) for i, raw in enumerate(lines) if (i + 1) not in skip
            and (s := raw.strip()) and not s.startswith("#")]


def shared_windows(files: list[tuple[Path, ast.Module]], window: int = WINDOW,
                   root: Path = SRC) -> list[list[tuple[str, int]]]:
    """Places where the same ``window`` consecutive code lines occur twice (only substantive lines count)."""
    seen: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for path, tree in files:
        code = _code_lines(path, tree)
        for k in range(len(code) - window + 1):
            chunk = [s for _, s in code[k:k + window]]
            if sum(len(s) > 12 for s in chunk) < window // 2:  # brackets and one-word lines say nothing
                continue
            seen["\n".join(chunk)].append((str(path.relative_to(root)), code[k][0]))
    return [locs for locs in seen.values() if len(locs) > 1]


def test_no_two_places_share_more_than_ten_lines():
    assert not shared_windows(_modules()), shared_windows(_modules())[:3]


def test_the_duplicate_check_can_fail(tmp_path):
    body = "\n".join(f"    value_{i} = compute_something_long({i}, scale=2.5)" for i in range(12))
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text(f"def f():\n{body}\n")
    b.write_text(f"def g():\n    extra = 1\n{body}\n")
    files = [(p, ast.parse(p.read_text())) for p in (a, b)]
    found = shared_windows(files, WINDOW, root=tmp_path)
    assert found and {f for locs in found for f, _ in locs} == {"a.py", "b.py"}
    assert not shared_windows(files[:1], WINDOW, root=tmp_path)
