__version__ = "0.1.0"

import os as _os
# OpenMP threads of the C++ renderer and of torch spin-wait for each other on 2-core machines, which made training
# steps 10-100x slower; passive waiting fixes it. It must be set before torch loads OpenMP; an explicit setting wins.
_os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
