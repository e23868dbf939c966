"""One way to keep a third-party library's log lines out of the way while our code reports the
same event itself (a damaged TIFF, a cancelled or failed acquisition)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TypeVar

Keep = TypeVar("Keep", bound=logging.Filter | Callable[[logging.LogRecord], bool])


@contextlib.contextmanager
def log_filter(logger: str, keep: Keep) -> Iterator[Keep]:
    """While active, the records of the logger named ``logger`` that ``keep`` rejects
    (returns False for) are not logged; yields ``keep`` (a filter that records what it drops)."""
    log = logging.getLogger(logger)
    log.addFilter(keep)
    try:
        yield keep
    finally:
        log.removeFilter(keep)
