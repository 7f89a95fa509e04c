"""The rooms stay apart: a stage imports only core, itself, and other stages' public faces.

A stage's face is its package (`import student`, `from lut import AdaptiveLUT`); its modules
(`student.fast`, `lut.model`) are its insides. `student/` does not import `teacher/` at all: it
opens teacher folders through `core.models.load_model`. `core/` imports no stage.
"""

import ast

import pytest

from tests.conftest import REPO

STAGES = ("teacher", "student", "distill", "eval", "lut")


def imported_modules(path, root) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in a file, including those inside functions."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
            # `from student import fast` reaches a submodule too
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names
                    if (root / node.module.replace(".", "/") / f"{a.name}.py").is_file()]
    return out


def violations(package: str, root=REPO) -> list[str]:
    found = []
    for path in sorted((root / package).rglob("*.py")):
        for line, module in imported_modules(path, root):
            top, _, rest = module.partition(".")
            where = f"{path.relative_to(root)}:{line} imports {module}"
            if package == "core" and top in STAGES:
                found.append(f"{where}: core/ is below every stage and imports none")
            elif package == "student" and top == "teacher":
                found.append(f"{where}: student/ must not import teacher/ (open its folder with core.models)")
            elif top in STAGES and top != package and rest:
                found.append(f"{where}: another stage's insides; import its package face ({top}) instead")
    return found


@pytest.mark.parametrize("package", [*STAGES, "core"])
def test_no_stage_reaches_into_another(package):
    assert violations(package) == []


def test_the_walk_sees_a_violation(tmp_path):
    """The check itself: a planted import of another stage's module is caught, with its line."""
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "x.py").write_text("import os\n\ndef f():\n    from student.fast import make_fast\n")
    (tmp_path / "student").mkdir()
    (tmp_path / "student" / "y.py").write_text("from teacher import flow\n")
    assert violations("eval", tmp_path) == ["eval/x.py:4 imports student.fast: another stage's insides; import its "
                                  "package face (student) instead"]
    assert [v.split(":")[0] for v in violations("student", tmp_path)] == ["student/y.py"]
