"""``hpsearch`` command line: a thin layer over the Python API.

Exit codes: 0 success; 2 bad input (study file, arguments, unknown study, spec change); 3 storage
problem (unreachable, corrupt, disk full, lease held by another run); 4 the budget is used up and no
trial completed (every one failed or was pruned); 1 an unexpected failure; 130 interrupted (Ctrl-C
or SIGTERM).
"""

from __future__ import annotations

import sys
from typing import Any

import click

from ._common import fail, log_warnings_one_line, stdout_to_devnull
from ._inspect import dashboard, export, report
from ._model import export_model, predict
from ._run import init, resume, run
from ._serve import cancel, serve, submit, token, watch
from ._views import best, ls_, show

__all__ = ["main"]


class _Main(click.Group):
    """Click's own usage errors (bad option, missing argument) in the same one-line form."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
            sys.stdout.flush()  # here, so that a closed pipe is caught below and not at exit
        except BrokenPipeError:
            # `hpsearch show X | head -1`: the reader went away; stop quietly with 1, as click does for
            # a closed pipe inside a command (stdout goes to /dev/null: Python's flush at exit would fail)
            stdout_to_devnull()
            sys.exit(1)
        except click.exceptions.UsageError as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # bare `hpsearch`: the help, as click shows it
                e.show()
                sys.exit(e.exit_code)
            where = e.ctx.command_path if e.ctx is not None else "hpsearch"
            fail(f"{e.format_message()} (see `{where} --help`)", e.exit_code)
        except click.ClickException as e:
            fail(e.format_message(), e.exit_code)
        except (click.exceptions.Abort, KeyboardInterrupt):
            fail("interrupted (Ctrl-C)", 130)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hpsearch")
def main() -> None:
    """Hyperparameter search for PyTorch models: grid, random and TPE on Ray, stored in SQL."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own progress output instead
    log_warnings_one_line()


for _command in (init, run, resume, ls_, show, best, dashboard, report, export, export_model, predict, serve, token,
                 submit, cancel, watch):
    main.add_command(_command)

if __name__ == "__main__":  # pragma: no cover
    main()
