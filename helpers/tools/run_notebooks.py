"""Run the notebook sequence with papermill for one profile (``make figures``).

    python -m helpers.tools.run_notebooks --profile digits            # all notebooks, in order
    python -m helpers.tools.run_notebooks --profile cifar10 --only 00 # one notebook
    python -m helpers.tools.run_notebooks --profile my.yaml --set training.epochs=1

The default profile's executed notebooks replace the committed ones in notebooks/
(so they carry the outputs nbval compares); any other profile's, and any run with overrides, an
--output-dir or COMPANION_OUTPUT_DIR, go to <outputs>/<profile>/notebooks/ and leave notebooks/ alone.
Figures, tables and metrics.json go to figures/<profile>/ (or the output folder).  The long stages
report their progress to this terminal (helpers.progress), not into the executed notebooks.
Each notebook is executed into a temporary file and moved into place only when it has finished, so
an interrupted run leaves every notebook either as it was or complete.  No run writes the regression
reference (tests/reference/<profile>/, :mod:`helpers.tools.regression`): ``make reference`` does.
Progress bars are off in the executed notebooks (``TQDM_DISABLE=1`` unless you set it yourself).

The console shows only the progress lines: the kernels are started with transport encryption
(CurveZMQ keys provisioned by the kernel manager; IPC sockets where pyzmq lacks CurveZMQ), so
ipykernel has no plain-TCP warning to print, and a finished kernel is shut down without the
interrupt that could land in its last reply ("KeyboardInterrupt caught in kernel").
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

from helpers.experiment import default_output_dir
from helpers.paths import NOTEBOOK_DIR, REPO_ROOT, absolute_folder_variables, notebook_files, output_root
from helpers.profiles import DEFAULT_PROFILE, load_profile, parse_set
from helpers.progress import ENV as PROGRESS_ENV
from helpers.simdevice import NOTEBOOK_ENV
from helpers.utils import atomic_write_json, cli_main, tqdm_disabled_by_env


def notebooks(only: list[str] | None = None, planned: list[str] | None = None, profile: str = "") -> list[Path]:
    """The notebooks to run, in order: those ``only`` names (prefixes), else all of ``planned`` (a
    profile's ``notebooks``; None: every one).  Naming a notebook the profile does not run is an error
    (a profile without a ``debugging`` section has no debugging run to do in notebook 05)."""
    nbs = notebook_files()
    if only:
        nbs = [nb for nb in nbs if any(nb.name.startswith(o) for o in only)]
        if not nbs:
            raise SystemExit(f"--only: {only} matches no notebook in {NOTEBOOK_DIR}")
    if planned is not None:
        outside = [nb.name[:2] for nb in nbs if nb.name[:2] not in planned]
        if only and outside:
            raise ValueError(f"--only: {' '.join(outside)} is not among the notebooks of profile {profile!r} "
                             f"(its `notebooks`: {' '.join(planned)}); valid: any of those, or list it in `notebooks` "
                             "(the profile or --set)")
        nbs = [nb for nb in nbs if nb.name[:2] in planned]
    return nbs


def kernel_config():
    """Kernel manager settings for the batch runs: a kernel that declares CurveZMQ support (ipykernel's
    kernelspec does) gets manager-provisioned keys, so its TCP traffic is encrypted and it does not print
    ``Kernel is running over TCP without encryption``; without CurveZMQ in pyzmq, local IPC sockets
    (POSIX) instead of TCP."""
    import zmq
    from jupyter_client import KernelManager
    from traitlets.config import Config

    c = Config()
    if zmq.has("curve") and "transport_encryption" in KernelManager.class_trait_names():  # jupyter_client >= 8.10
        c.KernelManager.transport_encryption = "auto"
    elif os.name == "posix":
        c.KernelManager.transport = "ipc"
    return c


def kernel_manager_class():
    """jupyter_client's AsyncKernelManager, except that shutting a kernel down does not interrupt it first.

    papermill shuts the kernel down only once the notebook has finished (its last request, kernel_info,
    answered), so there is nothing to interrupt; the SIGINT jupyter_client sends anyway can reach the kernel
    while it still finishes that request, and it then logs ``KeyboardInterrupt caught in kernel`` to the
    console.  The graceful shutdown request follows as usual (and a kernel that ignores it is killed).
    Interrupts at other times (a cell's timeout) are unchanged."""
    from jupyter_client import AsyncKernelManager

    class BatchKernelManager(AsyncKernelManager):
        async def _async_interrupt_kernel(self) -> None:
            if self.shutting_down:
                return
            await super()._async_interrupt_kernel()

    return BatchKernelManager


_SITE_PACKAGES = re.compile(r"(?<![\w.])/[^\s\"':]*/site-packages/")


def machine_paths_removed(text: str) -> str:
    """``text`` (a cell's printed output) without this machine's paths: the repository's folder becomes
    relative, and a library's file is named from its ``site-packages/`` on (a warning's origin)."""
    text = _SITE_PACKAGES.sub("site-packages/", text)
    return text.replace(f"{REPO_ROOT}/", "")


def _strip_run_metadata(path: Path, final_name: str | None = None) -> None:
    """Executed notebooks carry outputs, not this machine's paths or timings (clean diffs); the output
    path recorded is ``final_name`` (the notebook's name once moved into place)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    pm = nb.metadata.get("papermill", {})
    for key in ("start_time", "end_time", "duration", "exception"):
        pm.pop(key, None)
    for key in ("input_path", "output_path"):
        if key in pm:
            pm[key] = Path(pm[key]).name
    if final_name and "output_path" in pm:
        pm["output_path"] = final_name
    pm.pop("environment_variables", None)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        outputs = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                out["text"] = machine_paths_removed(out["text"])
                last = outputs[-1] if outputs else {}
                if last.get("output_type") == "stream" and last.get("name") == out["name"]:
                    last["text"] += out["text"]  # one print, however the kernel's flushes split it
                    continue
            elif out.get("output_type") == "error":
                out["traceback"] = [machine_paths_removed(line) for line in out["traceback"]]
            outputs.append(out)
        if "outputs" in cell:
            cell["outputs"] = outputs
    nbformat.write(nb, path)


def _remove_stale_partials(folder: Path) -> None:
    """Temporary notebooks (``.partial/<name>.<pid>.ipynb``) of runs that were killed: their process is gone."""
    for tmp in (folder / ".partial").glob("*.ipynb"):
        try:
            os.kill(int(tmp.name.rsplit(".", 2)[-2]), 0)  # still running (another run of the profile): leave it
        except (ValueError, IndexError, ProcessLookupError):
            tmp.unlink(missing_ok=True)
        except PermissionError:
            pass


class ProgressWatcher(threading.Thread):
    """Shows on this terminal the progress that a notebook's kernel reports (:mod:`helpers.progress`): on a
    terminal one live bar per running stage, with its rate and ETA; in a log (not a terminal) a line per
    minute of a running stage with its ETA; and one line per finished stage that took at least
    ``min_seconds``, with what it took."""

    def __init__(self, path: Path, prefix: str, stream=None, min_seconds: float = 5.0, every: float = 60.0):
        super().__init__(daemon=True)
        self.path, self.prefix, self.stream = path, prefix, stream or sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.min_seconds, self.every = min_seconds, every
        self.stopping = threading.Event()
        self.bars: dict[str, object] = {}
        self.started: dict[str, float] = {}
        self.said: dict[str, float] = {}

    def run(self) -> None:
        with open(self.path) as f:
            while True:
                line = f.readline()
                if line:
                    self.show(line)
                elif self.stopping.is_set():
                    break
                else:
                    time.sleep(0.3)
        for b in self.bars.values():
            b.close()

    def show(self, line: str) -> None:
        from tqdm import tqdm

        try:
            ev = json.loads(line)
        except ValueError:
            return
        key, now = ev["id"], time.monotonic()
        of = f"/{ev['total']}" if ev["total"] else ""
        if key not in self.started:
            self.started[key] = self.said[key] = now
            if self.live:
                # disable=False: tqdm reads TQDM_DISABLE, which this process sets for its kernels
                # (progress_bars_off); whether this terminal shows bars was decided before that
                self.bars[key] = tqdm(total=ev["total"], desc=f"{self.prefix} {ev['desc']}", file=self.stream,
                                      leave=False, mininterval=0.5, dynamic_ncols=True, disable=False)
        took = now - self.started[key]
        if key in self.bars:
            b = self.bars[key]
            b.n = ev["n"]
            b.set_postfix_str(ev["postfix"], refresh=False)
            b.refresh()
        elif not ev["done"] and now - self.said[key] >= self.every and ev["n"]:
            self.said[key] = now
            eta = f", ETA {took / ev['n'] * (ev['total'] - ev['n']) / 60:.1f} min" if ev["total"] else ""
            print(f"{self.prefix} {ev['desc']}: {ev['n']}{of} after {took / 60:.1f} min{eta}", file=self.stream,
                  flush=True)
        if ev["done"]:
            if key in self.bars:
                self.bars.pop(key).close()
            del self.started[key], self.said[key]
            if took >= self.min_seconds:
                print(f"{self.prefix} {ev['desc']}: {ev['n']}{of} in {took / 60:.1f} min"
                      + (f" ({ev['postfix']})" if ev["postfix"] else ""), file=self.stream, flush=True)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)


@contextlib.contextmanager
def environment(name: str, value: str | None):
    """While the block runs, ``name`` is ``value`` in this process's environment (unset where ``value`` is
    None), so the kernels started in it inherit it; restored afterwards, whatever happens."""
    before = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


@contextlib.contextmanager
def progress_on_terminal(prefix: str, enabled: bool):
    """While the block runs, kernels started in it report their progress to a temporary file that a
    :class:`ProgressWatcher` shows here (the kernels inherit ``COMPANION_PROGRESS_FILE``)."""
    if not enabled:
        yield
        return
    fd, name = tempfile.mkstemp(prefix="companion-progress-", suffix=".jsonl")
    os.close(fd)
    watcher = ProgressWatcher(Path(name), prefix)
    watcher.start()
    try:
        with environment(PROGRESS_ENV, name):
            yield
    finally:
        watcher.stop()
        Path(name).unlink(missing_ok=True)


def notebook_named(name: str):
    """While the block runs, kernels started in it know the notebook they execute (``COMPANION_NOTEBOOK``, which
    they inherit): the simulated accelerator names its per-process report by it (:mod:`helpers.simdevice`)."""
    return environment(NOTEBOOK_ENV, name)


def _execute(pm, nb: Path, out_nb_dir: Path, fig_dir: Path, name: str, params: dict, kernel: str, config,
             manager, terminal_progress: bool = False) -> float:
    """Execute one notebook with papermill; returns its seconds.

    papermill writes the notebook after every cell: into a temporary file of this process, moved over
    the executed notebook only once it has finished, so an interrupted run never leaves a committed
    notebook half-executed.  A notebook whose cell failed is kept for inspection in <figures>/failed/
    (never in notebooks/, where nbval would collect it)."""
    t0 = time.perf_counter()
    print(f"[{name}] {nb.name} ...", flush=True)
    partial = out_nb_dir / ".partial" / f"{nb.stem}.{os.getpid()}.ipynb"  # hidden from pytest / nbval
    partial.parent.mkdir(exist_ok=True)
    failed = fig_dir / "failed" / nb.name
    try:
        with progress_on_terminal(f"[{name}] {nb.stem[:2]}", terminal_progress), notebook_named(nb.name):
            pm.execute_notebook(str(nb), str(partial), parameters=params, kernel_name=kernel,
                                cwd=str(NOTEBOOK_DIR), progress_bar=False, config=config,
                                kernel_manager_class=manager)
    except Exception:
        if partial.is_file():
            failed.parent.mkdir(parents=True, exist_ok=True)
            os.replace(partial, failed)
            print(f"[{name}] {nb.name} failed; the partly executed copy is {failed}", flush=True)
        raise
    except BaseException:  # interrupted (Ctrl-C): nothing half-written stays behind
        partial.unlink(missing_ok=True)
        raise
    _strip_run_metadata(partial, nb.name)
    os.replace(partial, out_nb_dir / nb.name)
    failed.unlink(missing_ok=True)
    seconds = round(time.perf_counter() - t0, 1)
    skipped = _skip_reason(fig_dir, nb.stem)
    if skipped:
        print(f"[{name}] {nb.name} stepped aside after {seconds} s: {skipped}", flush=True)
    else:
        print(f"[{name}] {nb.name} done in {seconds} s", flush=True)
    return seconds


def _skip_reason(fig_dir: Path, stem: str) -> str | None:
    """The reason a notebook recorded for stepping aside (``skipped.<stem>`` in metrics.json,
    :func:`helpers.notebook.step_aside`), or None."""
    try:
        return json.loads((fig_dir / "metrics.json").read_text()).get("skipped", {}).get(stem)
    except (OSError, ValueError, AttributeError):
        return None


@contextlib.contextmanager
def progress_bars_off():
    """``TQDM_DISABLE=1`` for the kernels this run starts (they inherit the environment), unless the
    user set ``TQDM_DISABLE`` themselves: a progress bar in an executed notebook is hundreds of lines of
    stderr output that only a cold run writes, so ``make figures`` would otherwise leave the committed
    notebooks different from a warm run's for no reason.  ``TQDM_DISABLE=0`` (or false, no) keeps the
    bars: the kernels then run without the variable, since tqdm reads any non-empty value as "disable".
    The environment is restored afterwards."""
    user = os.environ.get("TQDM_DISABLE")
    value = "1" if user is None else (user if tqdm_disabled_by_env() else None)
    with environment("TQDM_DISABLE", value):
        yield


@contextlib.contextmanager
def claimed(folder: Path):
    """Hold ``<folder>/.run.lock`` for the block: one run at a time writes a profile's outputs.  A second run
    stops at once with a message instead of overwriting metrics.json under the first one's feet (the lock
    is released when the process ends, however it ends)."""
    import fcntl

    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / ".run.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise PermissionError(f"output folder {folder} cannot be written ({e.strerror}); give a writable one "
                              "(--output-dir or COMPANION_OUTPUT_DIR)") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise RuntimeError(f"{folder} is being written by another run of this profile (pid {other}); wait for "
                               "it to finish, or give this run another --output-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def _check_writable(folder: Path) -> None:
    """A folder the run writes notebooks into, tried before any work: named once if it cannot be written."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        raise PermissionError(f"notebook folder {folder} cannot be written ({e.strerror}); run from a writable "
                              "checkout or give --output-dir") from None


def run(profile: str, overrides: dict | None = None, only: list[str] | None = None, output_dir: str | None = None,
        kernel: str = "python3") -> dict:
    import papermill as pm

    absolute_folder_variables()  # the kernels run in notebooks/: relative folders mean the user's directory
    cfg = load_profile(profile, overrides)  # validate before any long work starts
    if Path(profile).suffix in (".yaml", ".yml"):
        profile = str(Path(profile).resolve())  # the notebooks run with notebooks/ as working directory
    name = cfg["name"]
    # only the default profile's own run, into figures/, replaces the committed notebooks in notebooks/
    default_run = (profile == DEFAULT_PROFILE and not overrides and not output_dir
                   and not os.environ.get("COMPANION_OUTPUT_DIR"))
    if overrides and not output_dir:  # never mix an override run into the profile's own results
        output_dir = str(default_output_dir(name, overrides))
    if output_dir:
        output_dir = str(Path(output_dir).resolve())  # the notebooks run with notebooks/ as working directory
    fig_dir = Path(output_dir) if output_dir else output_root() / name  # where the notebooks put figures
    out_nb_dir = NOTEBOOK_DIR if default_run else fig_dir / "notebooks"
    selected = notebooks(only, cfg["notebooks"], name)  # checked before any long work
    with claimed(fig_dir):
        _check_writable(out_nb_dir)
        return _run(pm, profile, name, overrides, only, selected, output_dir, fig_dir, out_nb_dir, default_run,
                    kernel)


def _run(pm, profile, name, overrides, only, selected, output_dir, fig_dir, out_nb_dir, default_run,
         kernel) -> dict:
    params = {} if default_run else {"profile": str(profile), "overrides": overrides or {},
                                     "output_dir": output_dir}
    stages = fig_dir / "stages.json"  # the stage log (helpers.experiment): a full run starts a new one
    if not only and stages.is_file():
        stages.unlink()
    timings = {}
    terminal = not tqdm_disabled_by_env()  # the user's choice, read before the kernels' bars are turned off
    config, manager = kernel_config(), kernel_manager_class()
    _remove_stale_partials(out_nb_dir)
    try:
        with progress_bars_off():
            for nb in selected:
                timings[nb.name] = _execute(pm, nb, out_nb_dir, fig_dir, name, params, kernel, config, manager,
                                            terminal)
    finally:
        with contextlib.suppress(OSError):
            (out_nb_dir / ".partial").rmdir()  # empty unless another run of the profile is still going
    log = json.loads(stages.read_text()) if stages.is_file() else {}
    log["notebooks"] = {**log.get("notebooks", {}), **timings}
    fig_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(stages, log)
    if (fig_dir / "report.md").is_file():  # notebook 03 wrote it before the notebook times were known
        from helpers.tools.report import write_report

        write_report(fig_dir)
    print(json.dumps({"profile": name, "seconds": timings, "total_s": round(sum(timings.values()), 1)}))
    return timings


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=DEFAULT_PROFILE, help="profile name (params/<name>.yaml) or a YAML path")
    ap.add_argument("--only", nargs="+", help="notebook prefixes to run, e.g. 00 01")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="profile overrides, dotted keys")
    ap.add_argument("--output-dir", default=None, help="where figures go (default figures/<profile>/)")
    ap.add_argument("--kernel", default="python3")
    a = ap.parse_args(argv)
    run(a.profile, parse_set(a.set), a.only, a.output_dir, a.kernel)


if __name__ == "__main__":
    sys.exit(cli_main(main))
