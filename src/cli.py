"""Stage entry points: expected failures print one precise line, not a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from src.errors import UserError

# Errors that mean "the input is wrong": a params value, a missing or malformed file, a
# checkpoint for other classes, weights that cannot be had offline. Their messages name
# the file or key and what was expected; anything else is a bug and keeps its traceback.
EXPECTED = (UserError, FileNotFoundError, ValueError)


def run(main: Callable[[Sequence[str] | None], int | None], name: str) -> None:
    """Call a stage's ``main`` and exit: 0, its own status, 1 on an expected error, 130 on Ctrl-C."""
    try:
        status = main(None)
    except EXPECTED as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)
