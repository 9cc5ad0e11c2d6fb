"""catdiff: a latent-diffusion toolkit in PyTorch."""

import os

# OpenMP threads that spin while waiting make PyTorch up to 60x slower whenever another
# process shares the cores (seen on 2-core machines); sleeping waiters cost ~nothing alone.
# This must happen before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
