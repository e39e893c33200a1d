"""docs/reliability.md names the test that keeps each promise: every test it names exists,
so a renamed or deleted test fails here instead of leaving a promise unguarded."""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "reliability.md"
REFERENCE = re.compile(r"`((?:tests|bench)/[\w/]+\.py)(?:::(\w+))?`")


def defined_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def test_every_test_the_reliability_doc_names_exists():
    references = REFERENCE.findall(DOC.read_text(encoding="utf-8"))
    assert len(references) > 30
    missing = []
    for file, function in references:
        path = REPO / file
        if not path.is_file():
            missing.append(file)
        elif function and function not in defined_functions(path):
            missing.append(f"{file}::{function}")
    assert missing == []


def test_every_promise_names_at_least_one_test():
    sections = re.split(r"^## ", DOC.read_text(encoding="utf-8"), flags=re.M)[1:]
    assert len(sections) >= 8
    unguarded = [s.splitlines()[0] for s in sections if not REFERENCE.search(s) and not s.startswith("What is not")]
    assert unguarded == []
