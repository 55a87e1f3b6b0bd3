"""The ``conveyor`` command: validate a spec, run a cycle, inspect the registry, roll out, roll back, demo,
webhook, serve.

``main`` applies the environment defaults of :mod:`conveyor.core.env`, parses the command line
(:mod:`conveyor.cli.parser`), runs the verb (:mod:`conveyor.cli.commands`) and turns errors into exit
statuses: 2 for an invalid spec, 1 for any other error, 130 when interrupted.
"""

from __future__ import annotations

import sys

from conveyor.cli.parser import build_parser
from conveyor.orchestration.ephemeral import exit_on_signals

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    from conveyor.core.env import apply_defaults
    from conveyor.core.spec import SpecError

    apply_defaults()  # before Prefect, Great Expectations or wandb are imported
    args = build_parser().parse_args(argv)
    if argv is None:  # the command-line program: SIGTERM stops it as cleanly as Ctrl-C
        exit_on_signals()
    if args.deprecated_alias:
        old, new = args.deprecated_alias
        print(f"conveyor: `conveyor {old}` is a deprecated alias of `conveyor {new}` and goes in the next release",
              file=sys.stderr)
    try:
        return args.func(args)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # the message names the stage, file, row or field
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
