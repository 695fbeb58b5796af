"""How every command ends: its data printed as JSON or for people, and user mistakes as one line and exit 2."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import click


def writable_output(path: str, option: str = "-o") -> None:
    """Refuse an output a command could not write before it does the work, so no result is computed and lost."""
    folder = Path(path).parent
    if not folder.is_dir():
        raise UserError(f"{option} {path}: the folder {folder} does not exist: create it first or write elsewhere")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise UserError(f"{option} {path}: permission denied (the folder {folder} or the file is not writable): "
                        "write elsewhere")


class UserError(click.ClickException):
    """A user mistake: `Error: <message>` on stderr and exit status 2, never a traceback."""

    exit_code = 2

    def show(self, file=None):
        click.echo(f"Error: {self.format_message()}", err=True)


INTERRUPTED = "Interrupted: nothing was written."


def api_errors(fn=None, *, interrupted: str = INTERRUPTED):
    """Turn the library's user errors (TaskIndexError) into their one-line CLI wording and exit status 2, and
    Ctrl-C into `interrupted` (formatted with the command's parameters) and exit status 130.

    Use it bare (`@api_errors`) or with the message a command says when interrupted."""
    if fn is None:
        return functools.partial(api_errors, interrupted=interrupted)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from taskindex.errors import TaskIndexError

        try:
            return fn(*args, **kwargs)
        except TaskIndexError as exc:
            raise UserError(exc.cli) from None
        except KeyboardInterrupt:
            # a second Ctrl-C while Python shuts down (which restores the default handler) would kill the
            # process by the signal; ignored, it leaves the exit status 130
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            click.echo(interrupted.format(**kwargs), err=True)
            sys.exit(130)

    return wrapper


@dataclass
class Exit:
    """What a command returns to print `data` and then exit with `code` (verify's damage, rebuild's failures)."""

    data: object
    code: int


def json_output(human):
    """The --json flag: print what the command returns as JSON, else through `human(data)`.

    A command returns its data (or Exit(data, code)); it prints nothing itself."""
    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, as_json: bool, **kwargs):
            result = fn(*args, **kwargs)
            data, code = (result.data, result.code) if isinstance(result, Exit) else (result, 0)
            if as_json:
                click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
            else:
                human(data)
            if code:
                sys.exit(code)

        return click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout, for scripts (no progress bars).")(wrapper)

    return decorate


def progress() -> bool | None:
    """The `progress` argument of long API calls: off under --json (stdout is the JSON), else tqdm's choice."""
    ctx = click.get_current_context(silent=True)
    return False if ctx is not None and ctx.params.get("as_json") else None


def table(rows: list[dict], columns: list[str]) -> None:
    """Aligned plain-text table: numbers right-aligned, text left-aligned."""
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    numeric = [all(isinstance(r.get(c), (int, float)) for r in rows) for c in columns]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    click.echo(line(columns))
    click.echo(line(["-" * w for w in widths]))
    for row in cells:
        click.echo(line(row))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "" if v is None else str(v)


def row_table(rows: list[dict], first: list[str]) -> None:
    """Index rows as a table: `first`, then classes and samples, then `dataset` (metadata, when any row has it)
    and `source` (where the task's images came from): each column one meaning."""
    columns = first + ["classes", "samples"] + (["dataset"] if any(r.get("dataset") is not None for r in rows) else [])
    table([{**r, "classes": r.get("n_classes"), "samples": r.get("n_samples")} for r in rows], columns + ["source"])


def template(text: str):
    """The human formatter that prints `text.format(**data)`: one line, fields by name."""
    return lambda data: click.echo(text.format(**data))
