"""`dlma` command line: one command per stage, each writing into a folder (`dlma.commands` lists them).

A command's options are the fields of the dataclasses it is built from (`--gen-batch-size` is
GenerateConfig.gen_batch_size), parsed by transformers' `HfArgumentParser` with the help text of
`dlma.params`, so the CLI, the notebooks, the presets and the manifests share one set of names.
Errors the user can fix are printed as one line, with exit status 2, and nothing written is lost.
"""

from __future__ import annotations

import contextlib
import io
import sys

from .commands import COMMANDS, COMPARE_HELP, RUN_HELP, load
from .distributed import rank
from .errors import DLMAError, did_you_mean


def usage() -> str:
    lines = ["usage: dlma COMMAND [options]   (dlma COMMAND --help for its options)", "",
             "Direct Large Model Alignment, offline. Commands:"]
    width = max(map(len, COMMANDS))
    lines += [f"  {name:<{width}} {c.help}" for name, c in COMMANDS.items()]
    lines.append(f"  {'run':<{width}} {RUN_HELP}")
    lines.append(f"  {'compare':<{width}} {COMPARE_HELP}")
    return "\n".join(lines)


def run_stage_command(name: str, argv: list[str]) -> None:
    command = COMMANDS[name]
    configs = command.parser(name).parse(argv)
    # under a launch, the main process alone prints the summary (errors: every process, on stderr)
    with contextlib.redirect_stdout(io.StringIO()) if rank() > 0 else contextlib.nullcontext():
        result = command.run(list(configs))
        where = next(c for c in configs if hasattr(c, "out") or hasattr(c, "run_dir"))
        print(load(command.summary)(result, where))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    name = argv[0] if argv else None
    if name in (None, "-h", "--help"):
        print(usage())
        return 0 if name else 2
    try:
        if name == "run":
            from .pipeline import main as run_main  # deferred: each command loads what it runs only

            run_main(argv[1:])
        elif name == "compare":
            from .compare import main as compare_main  # deferred: compare loads torch and numpy

            compare_main(argv[1:])
        elif name in COMMANDS:
            run_stage_command(name, argv[1:])
        else:
            hint = did_you_mean(name, [*COMMANDS, "run", "compare"])
            print(f"dlma: error: unknown command '{name}'{hint} (dlma --help lists the commands)", file=sys.stderr)
            return 2
    except DLMAError as e:
        print(f"dlma {name}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system refused: a folder not writable, a disk full, a path through a file
        where = f"{e.filename}: " if e.filename else ""
        print(f"dlma {name}: error: {where}cannot be written or read ({e.strerror or e})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dlma {name}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
