"""``models.process``: what a worker, or a bench, sets up once so that runs do not pay it."""

import os
import resource
import subprocess
import sys

import pytest


def _in_fresh_interpreter(code: str, *args: str, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env={**os.environ, **(env or {})},
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


def test_after_warm_up_the_membership_attack_imports_nothing() -> None:
    """A model's first job scores the attack for the first time in its worker's process (validation
    never does): after ``warm_up`` it loads no module (scikit-learn's SVC: ~0.8 s)."""
    code = (
        "import sys, numpy as np\n"
        "from models.metrics import mia_efficacy_from_confidence\n"
        "from models.process import warm_up\n"
        "assert 'sklearn.svm' not in sys.modules, 'already imported: the test proves nothing'\n"
        "warm_up()\n"
        "before = set(sys.modules)\n"
        "c = np.linspace(0.5, 1.0, 20)\n"
        "mia_efficacy_from_confidence(c[10:], c[:10], c)\n"
        "print(sorted(set(sys.modules) - before))\n"
    )
    assert _in_fresh_interpreter(code) == "[]"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_a_batch_of_activations_is_served_from_memory_already_mapped() -> None:
    """Three 20 MiB activations live at once, then freed, twenty times. glibc's thresholds start at 128 KiB
    and move with what the process frees, so whether the default re-faults them depends on the process's
    past (163,200-204,160 faults or none, here); pinned at their starting values it maps and faults every
    block anew. After ``reuse_freed_memory`` none, from that same start."""
    static = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
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
    assert int(_in_fresh_interpreter(code, "off", env=static)) > pages // 2  # most pages faulted again
    assert int(_in_fresh_interpreter(code, "on", env=static)) < pages // 100
