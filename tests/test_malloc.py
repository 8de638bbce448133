"""malloc tuning is process-wide, so it happens only when asked for (TAPEGRAD_MALLOC=keep)."""
import os
import subprocess
import sys

import pytest

SCRIPT = """
import tapegrad as tg
from tapegrad import malloc
calls = []
malloc.keep_freed_memory = lambda: calls.append(1)
x = tg.tensor([1.0, 2.0], requires_grad=True)
(x * x).sum().backward()  # loads the CPU engine
print(len(calls))
"""


@pytest.mark.parametrize("setting, calls", [(None, "0"), ("keep", "1"), ("default", "0")])
def test_malloc_is_tuned_only_on_request(setting, calls):
    env = {k: v for k, v in os.environ.items() if k != "TAPEGRAD_MALLOC"}
    if setting is not None:
        env["TAPEGRAD_MALLOC"] = setting
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == calls


def test_keep_freed_memory_reports_whether_it_tuned():
    from tapegrad import malloc
    assert malloc.keep_freed_memory() is sys.platform.startswith("linux")
