"""Small type aliases shared across the package."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["ProgressCallback"]

#: Long work reports progress as ``callback(done, total)``; the CLI turns it into a
#: tqdm bar, the server into job progress.
ProgressCallback = Callable[[int, int], None]
