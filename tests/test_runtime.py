"""ssmzoo.runtime: the allocator setting takes effect on glibc Linux and is harmless elsewhere."""
import ctypes.util
import resource
import sys

import pytest
import torch

from ssmzoo.runtime import keep_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux") or "libc" not in (ctypes.util.find_library("c") or ""),
                    reason="glibc only")
def test_keep_freed_memory_stops_page_faults_of_reallocated_temporaries():
    """A 12 MB temporary allocated and freed 20 times: each allocation faults in fresh pages by default (glibc
    unmaps large blocks on free), almost none once freed memory is kept."""
    assert keep_freed_memory()
    x = torch.ones(3 << 20)
    (x * 2).sum()  # the first allocation may fault
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        (x * 2).sum()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 20 * 100, f"{faults} page faults for 20 reused 12 MB temporaries"  # default: ~3000 each
