"""How a ``gasp`` command ends on an exception: a user's mistake is one line, a bug a traceback.

:func:`run_command` runs a command and sorts what it raises into two kinds:

*User errors*, printed as ``gasp <cmd>: error: <message>`` on stderr, exit status 2, no traceback:

- ``OSError`` and its subclasses (``FileNotFoundError``, ``NotADirectoryError``,
  ``IsADirectoryError``, ``FileExistsError``, ``PermissionError``, ``TimeoutError``, ...), wherever
  raised: they are about the files, devices and paths a user named or the machine they run on
  (a missing checkpoint, an ``--out`` that is a file, a full disk), not about our logic.
- ``ValueError``, ``IndexError`` and ``ImportError`` *raised by gasp_plugin's own code* (the frame
  that raised them is in a ``gasp_plugin`` module). Our code raises these only to reject what it
  was given, with a message written for the person running it: a recipe key or value
  (``gasp_plugin.recipe.RecipeError`` is a ``ValueError``), an unsupported model type, a folder
  that is not a scene, a frame index out of range, a missing optional extra (but not an
  ``ImportError`` of a gasp_plugin module itself: that is a broken install or a bug).

*Bugs*, everything else: a ``TypeError``, ``KeyError``, ``AttributeError`` or ``RuntimeError``
anywhere (where our code raises a ``RuntimeError`` it guards an internal invariant), and a
``ValueError``, ``IndexError`` or ``ImportError`` raised inside another library (torch,
transformers, ...), which means we called it wrongly. They print the traceback and a last line
``gasp <cmd>: internal error: ...`` asking for a report with ``gasp env``; exit status 1.

The kind is decided by the exception's type and where it was raised, not by which command ran, so
every command (and ``python -m gasp_plugin.train.launch`` on each rank of a distributed launch)
shares this one rule, and the validating code keeps raising the standard types its callers catch
(a ``GaspUserError`` marker class would have to be raised by every check in every layer). Its
limits: a shape check of ours that fires on a bug also reads as one line (its message names the
check; ``--debug`` shows where), and a ``ValueError`` from a C function our code calls directly
(``int("x")``) counts as ours. ``--debug`` prints the traceback of user errors too. Command-line
syntax errors never get here: argparse reports them (usage line, ``<prog>: error: ...``, status 2).

This module imports nothing from gasp_plugin, so every command module may use it.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Callable

__all__ = ["USER_ERROR_EXIT", "BUG_EXIT", "is_user_error", "error_message", "run_command", "add_debug_flag"]

USER_ERROR_EXIT = 2  # as argparse exits on a bad argument
BUG_EXIT = 1
_OWN_CHECKS = (ValueError, IndexError, ImportError)  # user errors when gasp_plugin raised them
_PACKAGE = __name__.partition(".")[0]


def _raised_in(exc: BaseException) -> str:
    """Module name of the frame that raised ``exc`` ('' if unknown)."""
    tb = exc.__traceback__
    if tb is None:
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(tb.tb_frame.f_globals.get("__name__", ""))


def _ours(module: str | None) -> bool:
    return bool(module) and (module == _PACKAGE or module.startswith(_PACKAGE + "."))


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` reports a user's mistake (see the module docstring) rather than a bug."""
    if isinstance(exc, OSError):
        return True
    if isinstance(exc, ImportError) and _ours(exc.name):
        return False  # a gasp_plugin module cannot be imported: a broken install or a bug
    return isinstance(exc, _OWN_CHECKS) and _ours(_raised_in(exc))


def error_message(exc: BaseException) -> str:
    """The text of the one-line report: the message, or ``path: reason`` for an OS error."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        paths = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else str(exc.filename)
        return f"{paths}: {exc.strerror}"
    return str(exc).strip() or type(exc).__name__


def _rank_prefix() -> str:
    """``[rank R] `` in a process of a multi-process launch, else ''."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        world = 1
    return f"[rank {os.environ.get('RANK', '?')}] " if world > 1 else ""


def run_command(prog: str, command: Callable[[], int | None], *, debug: bool = False) -> int:
    """Run ``command()`` and return its exit status; report what it raises as the module docstring
    says (``prog`` is the name in the report, e.g. ``gasp train``)."""
    try:
        return int(command() or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - sorted into user errors and bugs below
        if is_user_error(exc):
            if debug:
                traceback.print_exc()
            print(f"{prog}: error: {_rank_prefix()}{error_message(exc)}", file=sys.stderr)
            return USER_ERROR_EXIT
        traceback.print_exc()
        print(f"{prog}: internal error: {_rank_prefix()}{type(exc).__name__}: {error_message(exc)} (this is a bug: "
              "please report it with the traceback above and the output of `gasp env`)", file=sys.stderr)
        return BUG_EXIT


def add_debug_flag(parser: argparse.ArgumentParser, default=False) -> None:
    """``--debug``: print the traceback of user errors too."""
    parser.add_argument("--debug", action="store_true", default=default,
                        help="print the Python traceback of user errors too (bugs always print one)")
