"""ssmzoo's shared kernel library: functional ops only (no nn.Module), one folder per op.

- ``selective_scan``: Mamba-1 selective scan along scan routes, natural layouts in and out.
- ``directions``: scan routes as data (index maps and their inverses).
"""

from ssmzoo.ops import directions
from ssmzoo.ops.selective_scan import selective_scan

__all__ = ["directions", "selective_scan"]
