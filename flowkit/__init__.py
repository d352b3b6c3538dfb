"""flowkit: prepare video datasets for action recognition (TV-L1 flow, frames, C3D/I3D features).

Importing flowkit is light (no torch, no OpenCV): commands that do not compute start fast. It defaults
the OpenMP wait policy to sleeping waiters (flowkit.threads), which libgomp reads when torch loads, so
import flowkit before torch. ``set_thread_budget(threads, workers)`` is the API's ``--threads``.
"""

import logging

from flowkit.threads import set_openmp_env, set_thread_budget

__version__ = "0.1.0"
__all__ = ["__version__", "set_thread_budget"]

set_openmp_env()
logging.getLogger("flowkit").addHandler(logging.NullHandler())
