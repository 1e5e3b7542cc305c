"""The package's size rule: no function in modeling_scegg/ or examples/ over 60 lines, so each
reads on one screen (ruff, run by .ci/run, checks the rest of the style)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 60


def _long_functions(folder: Path) -> list[str]:
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    found.append(f"{path.relative_to(folder)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_over_sixty_lines():
    assert _long_functions(ROOT / "modeling_scegg") + _long_functions(ROOT / "examples") == []


def test_the_check_sees_a_long_function(tmp_path):
    (tmp_path / "long.py").write_text("def short():\n    pass\n\n\ndef f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES)
    assert _long_functions(tmp_path) == [f"long.py:5 f ({MAX_FUNCTION_LINES + 1} lines)"]
