"""The OpenMP wait the commands start with: set before torch loads, never over the user's own."""
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

from modeling_scegg import cli
from modeling_scegg.openmp import WAIT_DEFAULTS, configure_openmp


def test_sets_the_default_where_nothing_is_set():
    environ = {"PATH": "/bin"}
    assert configure_openmp(environ) == WAIT_DEFAULTS
    assert environ == {"PATH": "/bin", **WAIT_DEFAULTS}


@pytest.mark.parametrize("user", [{"GOMP_SPINCOUNT": "300000"}, {"OMP_WAIT_POLICY": "ACTIVE"},
                                  {"OMP_WAIT_POLICY": "passive", "GOMP_SPINCOUNT": "5"}])
def test_a_wait_the_user_set_wins(user):
    environ = dict(user)
    assert configure_openmp(environ) == {}
    assert environ == user, "neither variable of the wait may be added to or changed"


def test_scegg_main_sets_it_unless_the_user_did(monkeypatch, capsys):
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(name, raising=False)  # restored after the test
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert {k: os.environ.get(k) for k in WAIT_DEFAULTS} == WAIT_DEFAULTS
    monkeypatch.setenv("GOMP_SPINCOUNT", "123")
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert os.environ["GOMP_SPINCOUNT"] == "123"
    capsys.readouterr()


def test_the_setting_comes_before_torch():
    """Importing the package and its command loads no torch, so `main` sets the wait in time; the
    training example sets it before its own imports load torch."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    code = ("import sys; import modeling_scegg.cli; assert 'torch' not in sys.modules, 'torch loaded on import'; "
            "source = open(sys.argv[1]).read(); "
            "assert source.index('configure_openmp()') < source.index('from modeling_scegg.training')")
    subprocess.run([sys.executable, "-c", code, str(REPO_ROOT / "examples" / "train_stages.py")], env=env, check=True,
                   timeout=120)
