"""Stage entry points: one way to read a stage's paths, and expected failures as one precise line."""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

from abcd.core.errors import UserError


def stage_args(
    doc: str | None,
    argv: Sequence[str] | None,
    *,
    reads: Mapping[str, str] = {},
    writes: Mapping[str, str] = {},
    optional: Collection[str] = (),
) -> argparse.Namespace:
    """Parse a stage's command line: ``--params`` and one path option per input and output.

    ``reads`` and ``writes`` map each option (``"ood-out"`` -> ``--ood-out``, ``args.ood_out``)
    to its help text: a stage's ``main`` lists every path it reads and writes there, the same
    paths its dvc.yaml entry passes and declares. Options are required unless in ``optional``.
    """
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    for group, options in (("reads", reads), ("writes", writes)):
        paths = parser.add_argument_group(group)
        for name, help in options.items():
            paths.add_argument(f"--{name}", type=Path, required=name not in optional, help=help)
    return parser.parse_args(argv)


def run(main: Callable[[Sequence[str] | None], int | None], name: str) -> None:
    """Call a stage's ``main`` and exit: 0, its own status, 1 on an input error, 130 on Ctrl-C.

    Only :class:`UserError` (bad params, a missing or malformed file, weights that cannot be
    had offline) is printed as one line: its message names the thing and what was expected.
    Anything else is a bug and keeps its traceback.
    """
    try:
        status = main(None)
    except UserError as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as err:
        # A full disk is the machine's state, not a bug: one line, like a UserError (outputs written
        # through abcd.core.fileio already name their path; others name what the OS reported).
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {err.filename}" if err.filename else ""
        print(f"{name}: error: no space left on the device{where}: free some space, then run it again", file=sys.stderr)
        sys.exit(1)
    sys.exit(status or 0)
