"""The test suite's own rules (issue 9): one rig, one meaning per fixture name.

Every integration test gets its reference platform and its daemon from
tests/support/rig.py (through the fixtures of tests/conftest.py), so a device, a
password or a default is the same everywhere; and a fixture name is defined once, so
``platform`` is the same thing in every file that asks for it.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).parent
RIG = TESTS / "support" / "rig.py"
# Built only by the rig: the reference platform, its options, the daemon.
RIG_ONLY = {"ReferencePlatform", "PlatformOptions", "Daemon"}


def _modules() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if "fixtures" not in p.parts)


def _is_fixture(node: ast.expr) -> bool:
    target = node.func if isinstance(node, ast.Call) else node
    return isinstance(target, ast.Attribute) and target.attr == "fixture"


def fixture_definitions(modules: list[Path]) -> dict[str, list[str]]:
    """Fixture name -> the files defining it (a ``name=`` argument counts as the name)."""
    found: dict[str, list[str]] = defaultdict(list)
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for dec in node.decorator_list:
                if _is_fixture(dec):
                    name = node.name
                    if isinstance(dec, ast.Call):
                        for kw in dec.keywords:
                            if kw.arg == "name" and isinstance(kw.value, ast.Constant):
                                name = str(kw.value.value)
                    found[name].append(str(path.relative_to(TESTS)))
    return found


def rig_only_calls(modules: list[Path]) -> list[str]:
    """``file:line Name(`` for each construction of a RIG_ONLY class outside the rig."""
    calls = []
    for path in modules:
        if path == RIG:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.id if isinstance(f, ast.Name) else getattr(f, "attr", "")
                if name in RIG_ONLY:
                    calls.append(f"{path.relative_to(TESTS)}:{node.lineno} {name}(")
    return calls


def test_each_fixture_name_is_defined_once() -> None:
    twice = {n: files for n, files in fixture_definitions(_modules()).items() if len(files) > 1}
    assert twice == {}
    assert {"platform", "rig", "spawn"} <= fixture_definitions(_modules()).keys()


def test_platforms_and_daemons_come_from_the_rig() -> None:
    assert rig_only_calls(_modules()) == []
    assert rig_only_calls([RIG, TESTS / "conftest.py"]) == []  # the rig itself is skipped
    source = RIG.read_text()
    assert all(f"{name}(" in source for name in RIG_ONLY)  # ... and does build them
