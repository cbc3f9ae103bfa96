"""satlib: the library behind the executable companion to Godey, de la Clergerie & Sagot (2024).

"Why do small language models underperform? Studying LM saturation via the softmax bottleneck"
(arXiv:2404.07647). One module per concept of the paper, in one-way layers; see ``ARCHITECTURE.md`` for the map.

A chapter starts with::

    import satlib
    preset = satlib.setup(PRESET)   # validates the preset, seeds, applies the offline policy
"""

from satlib.config import VERSION
from satlib.presets import Preset, get_preset, setup

__all__ = ["Preset", "get_preset", "setup"]
__version__ = VERSION
