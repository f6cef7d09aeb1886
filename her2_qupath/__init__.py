"""her2-qupath: HER2 scoring of whole-slide images, for QuPath.

The package is a library first; the ``her2-qupath`` command, the scoring
server and the Groovy scripts are thin layers over it. Importing it does no
work: heavy dependencies (torch, transformers, paquo) load inside the
functions that need them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
