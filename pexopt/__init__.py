"""pexopt: plans the SRAM arena of a neural network on a microcontroller."""

__version__ = "0.1.0"
