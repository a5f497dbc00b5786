"""The background worker: ``python worker.py JOB.json`` runs one analysis in its own process.

Run by :class:`ACATLib.runner.BackgroundAnalysis` with Slicer's ``PythonSlicer`` so that Slicer's GUI
never waits for torch. Protocol on stdout, one line each (anything else is log text):

    ACAT:progress <fraction 0..1 or -> <stage text>
    ACAT:error <one-line message>
    ACAT:done <path of the result .npz>

Exit code 0 on success, 2 for an error the user can fix (``ACATCore.errors.ACATError``), 1 otherwise.
In Slicer the worker runs under ``PythonSlicer``, a launcher that starts the real Python as its child:
cancelling stops the whole process tree (``ACATLib.runner.kill_process_tree``).
"""
import json
import os
import sys
import time
import traceback

PREFIX = "ACAT:"


def emit(kind, text=""):
    sys.stdout.write(f"{PREFIX}{kind} {text}".rstrip() + "\n")
    sys.stdout.flush()


def report(fraction, stage):
    emit("progress", f"{'-' if fraction is None else f'{fraction:.4f}'} {stage}".strip())


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.stderr.write("usage: worker.py JOB.json\n")
        return 2
    with open(argv[0], encoding="utf-8") as f:
        job = json.load(f)
    for path in reversed(job.get("sys_path", [])):
        if path not in sys.path:
            sys.path.insert(0, path)
    started = time.time()
    try:
        report(0.0, "Loading ACAT (PyTorch)")
        from ACATLib import transfer
        from ACATLib.engine import run_engine
        volume = transfer.load_volume(job["input"])
        report(0.02, "Analysing")
        # the engine's own fractions (0..1) fill the bar between loading (2 %) and writing (98 %)
        result = run_engine(volume, job.get("options", {}), engine=job.get("engine", "ACATCore:analyze"),
                            report=lambda f, s: report(None if f is None else 0.02 + 0.95 * f, s))
        report(0.98, "Writing results")
        # only the outputs the user chose travel back (and are loaded into Slicer)
        transfer.save_result(result, job["output"], outputs=job.get("outputs"))
        emit("done", job["output"])
        print(f"ACAT worker finished in {time.time() - started:.1f} s", flush=True)
        return 0
    except Exception as exc:  # noqa: BLE001 - reported to the GUI, the process ends here
        try:
            from ACATCore.errors import ACATError
            user_error = isinstance(exc, ACATError)
        except Exception:  # noqa: BLE001
            user_error = False
        if not user_error:
            traceback.print_exc(file=sys.stdout)
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        emit("error", message if user_error else f"{type(exc).__name__}: {message}")
        sys.stdout.flush()
        return 2 if user_error else 1


if __name__ == "__main__":
    # The worker lives in ACATLib/; make ``import ACATLib`` work when run as a script.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
