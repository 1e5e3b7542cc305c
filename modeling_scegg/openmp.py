"""The OpenMP wait the package's commands start with (a short spin), so a busy machine costs its share only.

torch's CPU kernels (and scikit-learn's t-SNE) run on GNU OpenMP (libgomp). Left to itself,
libgomp lets a thread that has finished its part of a parallel region spin for up to 300000
pause loops (``GOMP_SPINCOUNT``; milliseconds) before it sleeps. On a quiet machine that hides the
wake-up latency; next to one other busy process it is the slow case: the thread that lost its
core to the other process holds up every region while the spinning ones take the cores it needs
(`benchmarks/bench_busy.py` measures this, quiet and busy, per setting). A short spin
(``GOMP_SPINCOUNT=10000``) keeps the quick wake-up a quiet machine gains from spinning but lets a
waiting thread sleep before it can hold a lost core's work up for long; sleeping at once
(``OMP_WAIT_POLICY=PASSIVE``) degraded as little under load but cost small networks ~20% quiet.

libgomp reads its environment once, when torch loads it, so :func:`configure_openmp` must run
before ``import torch``: the `scegg` command calls it first thing, and so do the example scripts
(``import modeling_scegg`` loads no torch, see its docstring). A value the user set wins: when
either variable of the wait (``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``) is set, the wait is left as
the user set it. Processes that ``accelerate launch`` starts inherit the environment.
"""
from __future__ import annotations

import os
from typing import MutableMapping

# chosen from benchmarks/bench_busy.py (table in benchmarks/README.md)
WAIT_DEFAULTS = {"GOMP_SPINCOUNT": "10000"}
_WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def configure_openmp(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set the package's OpenMP wait in `environ` (default: this process's) where the user set
    none; returns what it set. After torch has loaded, only child processes see the change."""
    environ = os.environ if environ is None else environ
    if any(name in environ for name in _WAIT_VARIABLES):
        return {}
    environ.update(WAIT_DEFAULTS)
    return dict(WAIT_DEFAULTS)
