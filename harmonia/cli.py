"""`harmonia` command line. Each subsystem owns its subcommands in a small `cli.py` of its own
(`add_parser(subparsers)` registers them); this file assembles them and runs every handler through
one error policy:

- exit 0: done; exit 1: finished, but some items failed (listed at the end; `--allow-partial`
  accepts that and exits 0); exit 2: refused (bad flag, bad input, unusable file or folder);
  exit 130: interrupted (Ctrl-C), 143: terminated (SIGTERM); temp files of unfinished outputs are
  deleted on the way out either way.
- Expected user errors (`USER_ERRORS`: ValueError, which includes CheckpointError, AudioError and
  the other harmonia input errors; missing, unreadable or wrongly typed files and folders; a full
  or read-only disk) print one line `harmonia <cmd>: error: ...`. The Python traceback is shown only
  with `--debug` (anywhere on the command line) or HARMONIA_DEBUG=1; anything else is a bug and
  keeps its traceback.

Argument types for numeric flags (`positive_int`, `positive_float`, ...) and the `--allow-partial`
policy live in the leaf `harmonia.cli_args`, so every subcommand rejects a nonsensical value before
doing any work without importing this module back.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import signal
import sys
import threading
import traceback

# Modules that register subcommands, in the order `harmonia --help` lists them.
SUBCOMMAND_MODULES = [
    "harmonia.demo.cli",  # demo (the README's main job)
    "harmonia.commands",  # encode, info, convert, bench
    "harmonia.registry_cli",  # list, xares-export
    "harmonia.eval.cli",  # evaluate, report
    "harmonia.data.cli",
    "harmonia.train.cli",
    "harmonia.train.distill_cli",  # distill
]

EXIT_USAGE = 2  # refused: bad arguments or an expected user error (argparse uses 2 as well)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as a shell reports it
EXIT_TERMINATED = 143  # SIGTERM (128 + SIGTERM)

# Exceptions that mean "the input or the environment is wrong", not "harmonia has a bug".
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, FileNotFoundError, FileExistsError, PermissionError, NotADirectoryError, IsADirectoryError,
)
# Other OSErrors that are the environment's, not a bug: full disk, read-only file system, quota.
USER_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.ENAMETOOLONG}
_ERRNO_HINTS = {
    errno.EACCES: "check its permissions or choose a writable location",
    errno.EPERM: "check its permissions or choose a writable location",
    errno.EROFS: "the file system is read-only: choose a writable location",
    errno.ENOSPC: "free some space and run the command again (finished outputs are kept)",
    errno.EDQUOT: "free some space and run the command again (finished outputs are kept)",
    errno.EEXIST: "something is in the way (a file where a folder is expected?): remove it or choose another path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
}


# -------------------------------------------------------------------------------------------------
# parser and error policy


def _add_common_flags(parser: argparse.ArgumentParser, top: bool = True) -> None:
    """--debug on every (sub)parser, so that it works before or after the subcommand; and the
    command name (`harmonia data shard`) for error messages."""
    if "--debug" not in parser._option_string_actions:  # a subcommand may define its own
        parser.add_argument("--debug", action="store_true", default=False if top else argparse.SUPPRESS,
                            help="show the full Python traceback on errors (also HARMONIA_DEBUG=1)")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                child.set_defaults(_prog=child.prog)
                _add_common_flags(child, top=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harmonia",
        description="General-purpose audio encoders: encode, ensemble, pre-train, evaluate.",
        epilog="exit status: 0 done, 1 finished with failed items (see --allow-partial), 2 refused "
               "(bad arguments or input), 130 interrupted, 143 terminated",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    _add_common_flags(parser)
    return parser


def is_user_error(e: BaseException) -> bool:
    return isinstance(e, USER_ERRORS) or (isinstance(e, OSError) and e.errno in USER_ERRNOS)


def error_line(prog: str, e: BaseException) -> str:
    """`harmonia <cmd>: error: <message>`, on one line."""
    if isinstance(e, OSError) and e.strerror and not isinstance(e, ValueError):
        message = f"{e.filename}: {e.strerror}" if e.filename else e.strerror  # no "[Errno 2]" noise
        if e.filename2:
            message += f" (-> {e.filename2})"
        if e.errno in _ERRNO_HINTS:
            message += f"; {_ERRNO_HINTS[e.errno]}"
    else:
        message = str(e) or type(e).__name__
        if "\nOriginal Traceback" in message:  # re-raised from a DataLoader worker: keep the worker's message
            message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]
    return f"{prog}: error: {' '.join(message.split())}"


class Terminated(BaseException):
    """SIGTERM (a batch scheduler's time limit, `kill PID`) turned into an exception, so that every
    atomic write in progress deletes its temp file on the way out, as for Ctrl-C."""


def _on_sigterm(main_pid: int):
    def handler(signum, frame):
        if os.getpid() != main_pid:  # a forked worker (process pool, DataLoader): die as it always did
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated()

    return handler


def main(argv: list[str] | None = None) -> int:
    prog = "harmonia"
    previous = None
    debug = os.environ.get("HARMONIA_DEBUG", "").strip().lower() not in ("", "0", "false", "no")
    try:
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _on_sigterm(os.getpid()))
        args = build_parser().parse_args(argv)  # inside: Ctrl-C during the imports is no traceback either
        debug = debug or getattr(args, "debug", False) is True
        prog = getattr(args, "_prog", "harmonia")
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print(f"{prog}: terminated (SIGTERM)", file=sys.stderr)
        return EXIT_TERMINATED
    except Exception as e:
        if not is_user_error(e):
            raise  # a bug: keep the traceback
        if debug:
            traceback.print_exc()
        print(error_line(prog, e), file=sys.stderr)
        return EXIT_USAGE
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
