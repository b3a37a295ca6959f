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

Argument types for numeric flags (`positive_int`, `positive_float`, ...) live here too, so every
subcommand rejects a nonsensical value before doing any work.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import math
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
]

EXIT_PARTIAL = 1  # finished, but some items failed
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
# argument types


def _number(kind, test, what: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, found {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"expected {what}, found {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


positive_int = _number(int, lambda v: v > 0, "an integer >= 1")
non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
MAX_SECONDS = 1e7  # about 4 months: more audio than any one clip, chunk, segment or shard holds
seconds = _number(float, lambda v: math.isfinite(v) and 0 < v <= MAX_SECONDS,
                  f"a number of seconds > 0 and <= {MAX_SECONDS:g}")


def device(text: str) -> str:
    """argparse type of --device: a torch device string this machine has (cpu, cuda, cuda:1, mps)."""
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a device such as cpu, cuda or cuda:1, found {text!r}") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has no usable CUDA GPU (torch "
                                             f"{torch.__version__}, CUDA {torch.version.cuda}); use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {count} CUDA GPU(s), cuda:0.."
                                             f"cuda:{count - 1}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available on this machine; use --device cpu")
    return text


def add_allow_partial(p: argparse.ArgumentParser) -> None:
    """The one `--allow-partial` flag of batch commands (exit 0 instead of 1 when items failed)."""
    p.add_argument("--allow-partial", action="store_true",
                   help=f"exit 0 even when some items failed (default: exit {EXIT_PARTIAL}; failures are "
                        "listed at the end either way)")


def report_failures(failures: list[tuple[str, str]], what: str, where: str = "") -> None:
    """The summary at the end of a batch command (stderr): count, then one line per failed item."""
    if not failures:
        return
    print(f"{len(failures)} {what}" + (f" ({where})" if where else "") + ":", file=sys.stderr)
    for item, why in failures:
        print(f"  {one_line(item)}: {' '.join(why.split())}", file=sys.stderr)


def one_line(name: str) -> str:
    """A file name as one printable line: quoted and escaped (repr) when it holds a newline, a tab or
    another control character, as it is otherwise."""
    return name if name.isprintable() else repr(name)


def partial_exit(failed: int, args: argparse.Namespace) -> int:
    """Exit code of a batch command that finished with `failed` failed items."""
    if failed and not getattr(args, "allow_partial", False):
        print(f"exit status {EXIT_PARTIAL}: pass --allow-partial to accept a partial result", file=sys.stderr)
        return EXIT_PARTIAL
    return 0


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
