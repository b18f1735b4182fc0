"""The demo orchestrator stays outside the stacks it drives."""

import os
import subprocess
import sys
import time

import psutil

from driftloop.supervisor import Supervisor


def test_the_demo_module_imports_neither_dagster_nor_ray() -> None:
    """The demo watches the system from outside; importing it must not start either stack."""
    probe = "import sys, driftloop.demo; print(sorted({'dagster', 'ray'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_stopping_the_demo_ends_its_servers_children_too(tmp_path) -> None:
    """`dagster dev` runs the webserver and daemon as its own children; none may outlive
    the demo (a stray daemon would go on running sensors on the demo's home)."""
    spawner = (
        "import subprocess, time; child = subprocess.Popen(['sleep', '300']);"
        "print(child.pid, flush=True); time.sleep(300)"
    )
    children = Supervisor(tmp_path, dict(os.environ))
    children.start("spawner", [sys.executable, "-c", spawner], tmp_path)
    log = tmp_path / "spawner.log"
    deadline = time.monotonic() + 30
    while not log.read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.1)
    grandchild = psutil.Process(int(log.read_text()))
    children.stop()
    gone = not grandchild.is_running() or grandchild.status() == psutil.STATUS_ZOMBIE
    assert gone, "the server's own child outlived the demo"
