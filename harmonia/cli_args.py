"""Argument types and batch-result helpers shared by every subcommand module.

A leaf of the CLI: `harmonia.cli` builds the parser from the subcommand modules (by name), and those
modules take their argument types and the `--allow-partial` policy from here, so nothing imports
`harmonia.cli` back.
"""

from __future__ import annotations

import argparse
import math
import sys

EXIT_PARTIAL = 1  # finished, but some items failed


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
