"""pexopt: plans the SRAM arena of a neural network on a microcontroller."""

import time as _time

__version__ = "0.1.0"
STARTED = _time.monotonic()  # when this process loaded pexopt (a `pexopt` command's start)
