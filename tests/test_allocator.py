"""The allocator setting the data-aware shrink makes: freed blocks of activations go back to the system.

The oracle is the same allocation pattern without the setting, in a process of its own: a heap whose mmap
threshold has risen keeps the freed blocks (fragmented between live ones) resident."""

import subprocess
import sys

import pytest

PATTERN = r"""
import sys, torch
from interprune.allocator import release_promptly
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
if sys.argv[1] == "set":
    assert release_promptly()
big = torch.ones(4 << 20); del big          # a 16 MB block freed: glibc's threshold rises to it
blocks = [torch.ones(1 << 20) for _ in range(64)]    # 64 blocks of 4 MB, touched
before = rss()
del blocks[::2]                                      # every other one freed, live ones between them
print(before - rss())
"""


def _freed_mb(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", PATTERN, mode], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_go_back_to_the_system():
    freed = _freed_mb("set")
    if freed < 0:
        pytest.skip("not glibc")
    assert freed > 100  # 32 blocks of 4 MB (128 MB) returned at once
    assert _freed_mb("default") < 20  # without it, the heap keeps them
