"""The demo orchestrator stays outside the stacks it drives."""

import subprocess
import sys


def test_the_demo_module_imports_neither_dagster_nor_ray() -> None:
    """The demo watches the system from outside; importing it must not start either stack."""
    probe = "import sys, driftloop.demo; print(sorted({'dagster', 'ray'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
