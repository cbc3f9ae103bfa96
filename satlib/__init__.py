"""satlib: the library behind the executable companion to Godey, de la Clergerie & Sagot (2024).

"Why do small language models underperform? Studying LM saturation via the softmax bottleneck"
(arXiv:2404.07647). One module per concept of the paper, in one-way layers; see ``ARCHITECTURE.md`` for the map.

A chapter starts with::

    import satlib
    preset = satlib.setup(PRESET)   # validates the preset, seeds, applies the offline policy
"""

import warnings

# Importing the book's modules imports transformers, which imports tqdm.auto: in a notebook without ipywidgets that
# warns "IProgress not found" on the page. The book shows no progress bars in notebooks, so the warning says nothing.
warnings.filterwarnings("ignore", message="IProgress not found")

from satlib.config import VERSION  # noqa: E402 - after the filter, which must precede the imports
from satlib.presets import Preset, get_preset, setup  # noqa: E402

__all__ = ["Preset", "get_preset", "setup"]
__version__ = VERSION
