"""flowkit: prepare video datasets for action recognition (TV-L1 flow, frames, C3D/I3D features)."""

import logging

__version__ = "0.1.0"

logging.getLogger("flowkit").addHandler(logging.NullHandler())
