"""``models.process``: what a worker, or a bench, sets up once so that runs do not pay it."""

import resource
import subprocess
import sys

import pytest


def _in_fresh_interpreter(code: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True, timeout=120
    )
    return out.stdout.strip()


def test_after_warm_up_a_first_optimizer_imports_nothing() -> None:
    """torch imports torch._dynamo (~1 s) when a process builds its first optimizer: after ``warm_up``,
    the optimizer a run builds loads no module."""
    code = (
        "import sys, torch\n"
        "from models.process import warm_up\n"
        "assert 'torch._dynamo' not in sys.modules, 'already imported: the test proves nothing'\n"
        "warm_up()\n"
        "before = set(sys.modules)\n"
        "torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1, momentum=0.9)\n"
        "print(sorted(set(sys.modules) - before))\n"
    )
    assert _in_fresh_interpreter(code) == "[]"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_a_batch_of_activations_is_served_from_memory_already_mapped() -> None:
    """Three 20 MiB activations live at once, then freed, twenty times. By default glibc raises its mmap
    threshold to 20 MiB and its trim threshold to 40 MiB after the first free, so the 60 MiB freed at the top
    of the heap goes back to the kernel after each round and is page-faulted in again in the next (204,160
    faults here; with four 8 MiB blocks whether it did depended on what the imports had freed before).
    After ``reuse_freed_memory`` none."""
    code = (
        "import resource, sys, torch\n"
        "from models.process import reuse_freed_memory\n"
        "def faults():\n"
        "    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "    for _ in range(20):\n"
        "        xs = [torch.ones(5 * 2**20) for _ in range(3)]\n"
        "        del xs\n"
        "    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start\n"
        "if sys.argv[1] == 'on':\n"
        "    assert reuse_freed_memory()\n"
        "faults()\n"
        "print(faults())\n"
    )
    pages = 20 * 3 * 20 * 2**20 // resource.getpagesize()
    assert int(_in_fresh_interpreter(code, "off")) > pages // 2  # the default: most pages faulted again
    assert int(_in_fresh_interpreter(code, "on")) < pages // 100
