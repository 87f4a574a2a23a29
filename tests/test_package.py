"""Package-level behaviour: the extension loads on a bare import; info() and the CLI work."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import adkernels


@pytest.mark.skipif(not adkernels._C_loaded(), reason="C++ extension not built")
def test_bare_import_loads_the_extension():
    """`import adkernels` alone (torch not imported first) must still load the C++ kernels."""
    code = "import adkernels, sys; sys.exit(0 if adkernels._C_loaded() else 3)"
    root = os.path.dirname(os.path.dirname(os.path.abspath(adkernels.__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    assert subprocess.run([sys.executable, "-c", code], cwd=root, env=env).returncode == 0


def test_info_and_cli(capsys):
    d = adkernels.info(print_out=False)
    assert "reference" in d["backends"]
    assert d["cpu_extension"] == adkernels._C_loaded()
    from adkernels.cli import main

    assert main(["info"]) == 0
    assert "backends" in capsys.readouterr().out
