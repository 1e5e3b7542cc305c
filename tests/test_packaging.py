"""The package as installed: every imported dependency declared in pyproject.toml, the optional
ones (plots, HDF5) not needed to predict, `scegg --help` without torch, a licence, a version, and
`import modeling_scegg` inside a model folder."""
import ast
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
# a finder that makes modules look uninstalled, for a fresh interpreter
HIDE = """
import importlib.abc, sys
class _Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {hidden!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (hidden by the test)", name=name)
sys.meta_path.insert(0, _Hide())
"""


def _python(code: str, cwd: Path = REPO_ROOT, **env: str) -> subprocess.CompletedProcess:
    """A fresh interpreter that imports this checkout's package (PYTHONPATH, after the cwd)."""
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, env=environment,
                          timeout=300)


def _requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _imported_top_level_modules() -> set[str]:
    names = set()
    for path in (REPO_ROOT / "modeling_scegg").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"modeling_scegg", "__future__"}


def test_every_imported_distribution_is_declared():
    project = PYPROJECT["project"]
    declared = {_requirement_name(r) for r in project["dependencies"]}
    declared |= {_requirement_name(r) for extra in project["optional-dependencies"].values() for r in extra}
    # import_optional() names modules in strings: those count too
    optional = set(re.findall(r'import_optional\("([\w]+)', "".join(
        p.read_text() for p in (REPO_ROOT / "modeling_scegg").rglob("*.py"))))
    distributions = importlib.metadata.packages_distributions()
    missing = {}
    for module in _imported_top_level_modules() | optional:
        names = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        if not names & declared:
            missing[module] = sorted(names)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
    assert {"pyarrow", "filelock"} <= {_requirement_name(r) for r in project["dependencies"]}
    for heavy in ("matplotlib", "scikit-learn", "h5py"):
        assert heavy not in {_requirement_name(r) for r in project["dependencies"]}, f"{heavy} belongs in an extra"


def test_tests_extra_installs_every_extra():
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert "scegg[train,demo]" in extras["tests"] and "scegg[plots,hdf5,tensorboard]" in extras["train"]
    assert any(r.startswith("gradio") for r in extras["demo"]) and any(r.startswith("selenium") for r in extras["tests"])


def test_metadata_license_version_and_types():
    assert "Apache License" in (REPO_ROOT / "LICENSE").read_text() and "Version 2.0" in (REPO_ROOT / "LICENSE").read_text()
    assert PYPROJECT["project"]["license"] == "Apache-2.0" and PYPROJECT["project"]["license-files"] == ["LICENSE"]
    assert (REPO_ROOT / "modeling_scegg" / "py.typed").is_file()
    import modeling_scegg

    assert re.fullmatch(r"\d+\.\d+\.\d+", modeling_scegg.__version__)
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "modeling_scegg.__version__"}


def test_help_does_not_import_torch_or_transformers():
    code = ("import sys\nfrom modeling_scegg.cli import main\n"
            "for argv in (['--help'], ['predict', '--help'], ['push', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit as done:\n        assert done.code == 0, argv\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'datasets', 'huggingface_hub') if m in sys.modules)\n"
            "print('HEAVY', heavy)\n")
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout, result.stdout[-500:]


def test_predicting_needs_neither_plots_nor_hdf5(tiny_model, tmp_path):
    """`scegg predict` never imports them (torch merely probes for scikit-learn with find_spec, which
    an uninstalled package answers with None)."""
    tiny_model.save_pretrained(tmp_path / "model")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((2, 5, 12)).astype(np.float32))
    code = (f"import sys\nfrom modeling_scegg.cli import main\nassert main(['predict', {str(tmp_path / 'model')!r}, "
            f"{str(tmp_path / 'x.npy')!r}]) == 0\n"
            "print('OPTIONAL', sorted(m for m in ('matplotlib', 'sklearn', 'h5py', 'threadpoolctl') if m in sys.modules))\n")
    result = _python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OPTIONAL []" in result.stdout
    assert len([line for line in result.stdout.splitlines() if line.startswith("{")]) == 2


def test_a_missing_extra_is_named_with_its_install_command():
    code = HIDE.format(hidden=("matplotlib",)) + (
        "from modeling_scegg.errors import UserError\n"
        "try:\n    import modeling_scegg.visualization\nexcept UserError as error:\n    print(error.remedy)\n")
    result = _python(code)
    assert "pip install 'scegg[plots]'" in result.stdout, result.stderr[-2000:]


def test_the_package_imports_inside_a_model_folder(tiny_model, tmp_path):
    """A Python session started in a model folder has it first on sys.path: the folder's remote code
    must not shadow the package (it is written as modeling_sc_egg.py, see export)."""
    tiny_model.save_pretrained(tmp_path / "model")
    assert not (tmp_path / "model" / "modeling_scegg.py").exists()
    code = ("import modeling_scegg\nfrom modeling_scegg import SCEGGModel\n"
            "model = SCEGGModel.from_pretrained('.')\nprint('PACKAGE', modeling_scegg.__file__)\n")
    result = _python(code, cwd=tmp_path / "model")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"PACKAGE {REPO_ROOT / 'modeling_scegg' / '__init__.py'}" in result.stdout
    # the check can fail: a folder holding the package's module name does shadow it
    (tmp_path / "model" / "modeling_scegg.py").write_text(json.dumps("shadow") + "\n")
    shadowed = _python("import modeling_scegg\nprint('PACKAGE', modeling_scegg.__file__)\n", cwd=tmp_path / "model")
    assert f"PACKAGE {REPO_ROOT}" not in shadowed.stdout


def test_importing_the_model_module_itself_registers_the_auto_classes(tiny_model, tmp_path):
    """`from modeling_scegg.modeling_scegg import SCEGGModel` (not through the package's lazy names)
    registers the Auto classes and the package's folder writer as `modeling_scegg.SCEGGModel` does."""
    tiny_model.save_pretrained(tmp_path / "model")
    code = ("import os\nfrom modeling_scegg.modeling_scegg import SCEGGModel\nfrom transformers import AutoModel\n"
            f"SCEGGModel.from_pretrained({str(tmp_path / 'model')!r}).save_pretrained({str(tmp_path / 'again')!r})\n"
            f"print('FILES', sorted(os.listdir({str(tmp_path / 'again')!r})))\n"
            f"print('AUTO', type(AutoModel.from_pretrained({str(tmp_path / 'again')!r})).__module__)\n")
    result = _python(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "preprocessor_config.json" in result.stdout and "README.md" in result.stdout, result.stdout
    assert "AUTO modeling_scegg.modeling_scegg" in result.stdout
