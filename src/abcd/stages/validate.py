"""Stage `validate`: every key and value of params.yaml, and the sources file, checked before any other stage.

DVC removes a stage's outputs before it starts the stage's command, so a bad value that the stage
itself refuses has already cost its outputs (a checkpoint, the prepared data). Every other stage
depends on this one's marker, so this runs first and fails first; its marker is ``persist`` (DVC
leaves it in place) and its content is constant, so its hash never changes and no stage re-runs
because of it. It depends on the whole params file, so a key no stage reads (a misspelt top-level
``Lr``) is refused too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from abcd.core.cli import run, stage_args
from abcd.core.fileio import atomic_write_text
from abcd.core.params import load_params
from abcd.data.sources import choose_set, load_sources

MARKER = "params.yaml and the sources file are valid\n"


def main(argv: Sequence[str] | None = None) -> None:
    args = stage_args(
        __doc__,
        argv,
        reads={"sources": "sources file (data/sources.yaml)"},
        writes={"out": "marker file every stage depends on (constant content)"},
    )
    params = load_params(args.params)
    sources = load_sources(args.sources)
    # The set prepare will read must serve params' classes: checked here, before prepare's outputs go.
    choose_set(params.prepare.use, sources.sets, params.classes, Path.cwd(), dict(os.environ))
    if not args.out.is_file() or args.out.read_text() != MARKER:
        atomic_write_text(args.out, MARKER)
    print(f"validate: {args.params} and {args.sources} are valid")


if __name__ == "__main__":
    run(main, "validate")
