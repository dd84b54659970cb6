"""The `medqlora` console script's entry point, kept free of heavy imports: a Ctrl-C or SIGTERM in the seconds
spent importing torch, transformers and Lightning (or anywhere outside training, which `CheckpointOnInterrupt`
takes over) ends the command with one line and 128 + the signal's number, not a traceback."""

from __future__ import annotations

import os
import signal
import sys

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(BaseException):
    """A signal stopped the command. Not a KeyboardInterrupt: Lightning turns that into exit status 1 mid-setup;
    any other BaseException it re-raises after its teardown."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _stop(main_pid: int):
    def handler(signum: int, frame) -> None:
        if os.getpid() != main_pid:  # a forked worker: die of the signal as it would have without medqlora
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Stopped(signum)

    return handler


def main() -> int:
    """Run `medqlora <command> ...` (medqlora.cli.main) with the signals turned into a one-line stop."""
    handler = _stop(os.getpid())
    for signum in SIGNALS:
        if signal.getsignal(signum) in (signal.SIG_DFL, signal.default_int_handler):  # not when a shell ignores it
            signal.signal(signum, handler)
    try:
        from medqlora.cli import main as run_command

        return run_command()
    except Stopped as stop:
        name = signal.Signals(stop.signum).name
        print(f"medqlora: stopped by {name} (a fit saves interrupted.ckpt once training has begun)", file=sys.stderr)
        return 128 + stop.signum
