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
    """Three 12 MB temporaries alive at once, allocated and freed 20 times. By default glibc trims the freed top of
    its heap once it exceeds twice the (dynamically raised) mmap threshold, so the next allocations fault their
    pages in again (here ~9000 faults a round on most rounds: 40-180 thousand in all); with freed memory kept,
    none. The bound leaves room for one stray round (late in a long session another thread's allocation can take
    the kept block once: ~3000 faults a temporary)."""
    assert keep_freed_memory()
    x = torch.ones(3 << 20)

    def round_of_temporaries():
        y = x * 2
        z = y * 3
        return float((z * 4)[0])

    round_of_temporaries()  # the first allocations may fault
    faults = []
    for _ in range(20):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        round_of_temporaries()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    assert sum(faults) < 4 * 3072, f"page faults of 20 rounds of three reused 12 MB temporaries: {faults}"
