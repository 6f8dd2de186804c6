"""make figures (helpers.tools.run_notebooks) never leaves a notebook half-executed and never writes the
regression reference: each notebook is executed into a temporary file and moved into place when it
has finished."""
import os
import re
import subprocess
import sys
import time

import nbformat
import pytest

from helpers.tools import regression, run_notebooks


@pytest.fixture
def fake_papermill(monkeypatch):
    """papermill.execute_notebook that writes the output as papermill does (after a cell), then either
    finishes, fails in a cell, or is interrupted."""
    import papermill

    mode = {"how": "finish"}

    def execute_notebook(src, out, **kw):
        mode.setdefault("tqdm_disable", []).append(os.environ.get("TQDM_DISABLE"))  # what a kernel inherits
        nb = nbformat.read(src, as_version=4)
        nb.metadata["papermill"] = {"input_path": src, "output_path": out}
        nbformat.write(nb, out)
        if mode["how"] == "fail":
            raise papermill.PapermillExecutionError(0, 1, "ValueError", "boom", [])
        if mode["how"] == "interrupt":
            raise KeyboardInterrupt
        nb.cells[0].source += "\n<!-- executed -->"
        nbformat.write(nb, out)

    monkeypatch.setattr(papermill, "execute_notebook", execute_notebook)
    return mode


def test_a_finished_run_moves_each_notebook_into_place(tmp_path, fake_papermill):
    run_notebooks.run("digits", output_dir=str(tmp_path / "out"), only=["00", "01"])
    nb_dir = tmp_path / "out" / "notebooks"
    assert sorted(p.name for p in nb_dir.glob("*.ipynb")) == ["00_data_and_model.ipynb", "01_conductance.ipynb"]
    nb = nbformat.read(nb_dir / "00_data_and_model.ipynb", as_version=4)
    assert "<!-- executed -->" in nb.cells[0].source
    assert nb.metadata["papermill"]["output_path"] == "00_data_and_model.ipynb"  # not the temporary name
    assert not (nb_dir / ".partial").exists()


@pytest.mark.parametrize("user_value, kernels_see", [(None, "1"), ("1", "1"), ("0", None), ("false", None)])
def test_the_kernels_run_without_progress_bars_unless_the_user_asks(tmp_path, fake_papermill, monkeypatch,
                                                                    user_value, kernels_see):
    """A cold run would otherwise write hundreds of lines of tqdm output into the executed notebooks;
    TQDM_DISABLE=0 keeps the bars (tqdm itself reads "0" as disable, so the kernels get no variable)."""
    if user_value is None:
        monkeypatch.delenv("TQDM_DISABLE", raising=False)
    else:
        monkeypatch.setenv("TQDM_DISABLE", user_value)
    run_notebooks.run("digits", output_dir=str(tmp_path / "out"), only=["00", "01"])
    assert fake_papermill["tqdm_disable"] == [kernels_see] * 2
    assert os.environ.get("TQDM_DISABLE") == user_value  # restored after the run


@pytest.mark.parametrize("how", ["interrupt", "fail"])
def test_an_interrupted_or_failed_notebook_leaves_the_previous_one_untouched(tmp_path, fake_papermill, how):
    reference_before = regression.reference_path("digits").read_bytes()
    run_notebooks.run("digits", output_dir=str(tmp_path / "out"), only=["00"])
    target = tmp_path / "out" / "notebooks" / "00_data_and_model.ipynb"
    before = target.read_bytes()
    fake_papermill["how"] = how
    with pytest.raises((KeyboardInterrupt, Exception)):
        run_notebooks.run("digits", output_dir=str(tmp_path / "out"), only=["00"])
    assert target.read_bytes() == before  # the finished notebook of the earlier run, whole
    assert not (tmp_path / "out" / "notebooks" / ".partial").exists()  # no temporary file, no empty folder
    failed = tmp_path / "out" / "failed" / "00_data_and_model.ipynb"
    assert failed.is_file() == (how == "fail")  # kept for inspection, outside any notebooks/ folder
    assert regression.reference_path("digits").read_bytes() == reference_before
    fake_papermill["how"] = "finish"  # a later run that finishes removes the failed copy
    run_notebooks.run("digits", output_dir=str(tmp_path / "out"), only=["00"])
    assert not failed.exists()


def test_partial_notebooks_of_killed_runs_are_removed_and_live_ones_kept(tmp_path):
    partial = tmp_path / ".partial"
    partial.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (partial / f"00_data_and_model.{dead}.ipynb").write_text("{}")
    (partial / f"01_conductance.{os.getpid()}.ipynb").write_text("{}")  # a run still going (this process)
    run_notebooks._remove_stale_partials(tmp_path)
    assert sorted(p.name for p in partial.iterdir()) == [f"01_conductance.{os.getpid()}.ipynb"]


def test_a_second_run_of_the_same_outputs_stops_at_once_naming_the_first(tmp_path):
    from helpers.tools.run_notebooks import claimed

    with claimed(tmp_path / "out"):
        with pytest.raises(RuntimeError, match=rf"being written by another run of this profile \(pid {os.getpid()}\)"):
            with claimed(tmp_path / "out"):
                pass
    with claimed(tmp_path / "out"):  # released when the first run ends
        pass


def test_an_output_folder_that_cannot_be_written_is_named_once_before_any_work(tmp_path, fake_papermill, capsys):
    from helpers.tools.run_notebooks import main
    from helpers.utils import cli_main

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    rc = cli_main(main, ["--profile", "digits", "--output-dir", str(blocker / "figs")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "cannot be written" in err[0] and str(blocker) in err[0]
    assert "tqdm_disable" not in fake_papermill  # no notebook was started


def test_cli_errors_are_one_line_and_the_traceback_needs_debug(capsys):
    from helpers.tools.run_notebooks import main
    from helpers.utils import cli_main

    assert cli_main(main, ["--profile", "no-such-profile"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: profile: 'no-such-profile' is not a known profile; valid:")
    with pytest.raises(Exception, match="no-such-profile"):
        cli_main(main, ["--profile", "no-such-profile", "--debug"])
    with pytest.raises(SystemExit):  # --only needs at least one notebook
        main(["--only"])


def test_relative_folder_variables_mean_the_users_directory(tmp_path, monkeypatch):
    from helpers.paths import absolute_folder_variables, cache_root

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COMPANION_ARTIFACTS", "rel/art")
    monkeypatch.setenv("COMPANION_OUTPUT_DIR", "rel/out")
    absolute_folder_variables()
    assert os.environ["COMPANION_OUTPUT_DIR"] == str(tmp_path / "rel" / "out")
    monkeypatch.chdir(tmp_path / "..")  # a kernel elsewhere still finds the same folder
    assert cache_root() == tmp_path / "rel" / "art"


def test_a_run_into_another_output_folder_leaves_the_committed_notebooks_alone(tmp_path, fake_papermill, monkeypatch):
    monkeypatch.setenv("COMPANION_OUTPUT_DIR", str(tmp_path / "elsewhere"))
    before = {p.name: p.read_bytes() for p in run_notebooks.NOTEBOOK_DIR.glob("*.ipynb")}
    run_notebooks.run("digits", only=["00"])
    assert {p.name: p.read_bytes() for p in run_notebooks.NOTEBOOK_DIR.glob("*.ipynb")} == before
    assert (tmp_path / "elsewhere" / "digits" / "notebooks" / "00_data_and_model.ipynb").is_file()


def test_the_terminal_shows_each_stage_the_kernel_reports(tmp_path, monkeypatch):
    """A kernel's bars (helpers.progress.FileBar) appear on the runner's terminal, one line per finished stage."""
    import io

    from helpers import progress

    log = tmp_path / "progress.jsonl"
    log.write_text("")
    monkeypatch.setenv(progress.ENV, str(log))
    out = io.StringIO()
    watcher = run_notebooks.ProgressWatcher(log, "[digits] 02", stream=out, min_seconds=0.0)
    watcher.start()
    bar = progress.bar(total=3, desc="screen gf@0.01 (accepted mutants)")
    assert isinstance(bar, progress.FileBar)
    for _ in range(3):
        bar.update(1)
    bar.set_postfix(tried=5)
    bar.close()
    for _ in progress.bar(range(2), desc="train (epochs)"):
        pass
    watcher.stopping.set()
    watcher.join(120)  # a loaded machine (two test workers) may take its time
    assert not watcher.is_alive()
    lines = [ln for ln in out.getvalue().replace("\r", "\n").splitlines() if " in " in ln and " min" in ln]
    assert lines[0].startswith("[digits] 02 screen gf@0.01 (accepted mutants): 3/3 in ") and "(tried=5)" in lines[0]
    assert lines[1].startswith("[digits] 02 train (epochs): 2/2 in ")


class _Terminal:
    """A stream that says it is a terminal and keeps what is written to it."""

    def __init__(self):
        self.parts: list[str] = []

    def isatty(self):
        return True

    def write(self, text):
        self.parts.append(text)

    def flush(self):
        pass


def test_the_terminal_draws_live_bars_while_the_kernels_run_without_them(tmp_path, monkeypatch):
    """The runner sets TQDM_DISABLE=1 for its kernels in its own environment (progress_bars_off), and tqdm
    reads that variable: the watcher's live bars must not go dark with the kernels' (a bar with its count,
    rate and ETA is drawn while the stage runs, not only the line when it ends)."""
    from helpers import progress

    log = tmp_path / "progress.jsonl"
    log.write_text("")
    monkeypatch.setenv(progress.ENV, str(log))
    term = _Terminal()
    watcher = run_notebooks.ProgressWatcher(log, "[cub100] 02", stream=term, min_seconds=0.0)
    with run_notebooks.progress_bars_off():
        assert os.environ["TQDM_DISABLE"] == "1"
        watcher.start()
        bar = progress.bar(total=4, desc="20 mutants on the samples")
        bar.every = 0.0  # every update reaches the file
        bar.update(1)
        for _ in range(100):  # until the watcher has drawn the running bar
            if any("1/4" in part for part in term.parts):
                break
            time.sleep(0.1)
        bar.update(3)
        bar.close()
        watcher.stopping.set()
        watcher.join(120)
    drawn = "".join(term.parts)
    assert "[cub100] 02 20 mutants on the samples" in drawn and "1/4" in drawn and "<" in drawn  # elapsed<ETA
    assert "20 mutants on the samples: 4/4 in " in drawn


@pytest.mark.parametrize("user, inside", [(None, "1"), ("1", "1"), ("true", "true"), ("0", None), ("no", None)])
def test_the_kernels_bars_follow_the_users_tqdm_disable(monkeypatch, user, inside):
    """Unset: the kernels run with TQDM_DISABLE=1; set to a "disable" value: as set; 0 / no / false: unset
    (tqdm reads any non-empty value as disable).  Restored afterwards either way."""
    if user is None:
        monkeypatch.delenv("TQDM_DISABLE", raising=False)
    else:
        monkeypatch.setenv("TQDM_DISABLE", user)
    with run_notebooks.progress_bars_off():
        assert os.environ.get("TQDM_DISABLE") == inside
    assert os.environ.get("TQDM_DISABLE") == user


ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/(?:[\w.+-]+/)+[\w.+-]*")


def _printed(nb) -> list[str]:
    """Every text a notebook's cells printed or displayed."""
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                texts.append(out.text)
            elif out.output_type == "error":
                texts += out.traceback
            else:
                texts += [v for k, v in out.get("data", {}).items() if k.startswith("text/")]
    return texts


def test_executed_notebooks_keep_no_path_of_the_machine_that_ran_them(tmp_path):
    """A warning naming a library's file, or a traceback through the repository, is kept without the
    folders of the machine that ran it, and a print the kernel flushed in two parts is one output: the
    committed notebooks are the same bytes on every checkout."""
    venv_file = f"{sys.prefix}/lib/python3.11/site-packages/tqdm/auto.py"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=[
        nbformat.v4.new_output("stream", name="stderr", text=f"{venv_file}:21: TqdmWarning: IProgress\n"),
        nbformat.v4.new_output("error", ename="E", evalue="v",
                               traceback=[f"File {run_notebooks.REPO_ROOT}/helpers/experiment.py:3"]),
        nbformat.v4.new_output("stream", name="stdout", text="see https://example.org/a/b"),
        nbformat.v4.new_output("stream", name="stdout", text=" and ../docs/x.md\n")])])
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    assert any(ABSOLUTE_PATH.search(t) for t in _printed(nb))  # the check below can fail
    run_notebooks._strip_run_metadata(path)
    printed = _printed(nbformat.read(path, as_version=4))
    assert printed == ["site-packages/tqdm/auto.py:21: TqdmWarning: IProgress\n", "File helpers/experiment.py:3",
                       "see https://example.org/a/b and ../docs/x.md\n"]


COMMITTED = sorted(run_notebooks.NOTEBOOK_DIR.glob("*.ipynb")) + sorted(
    run_notebooks.REPO_ROOT.glob("figures/*/notebooks/*.ipynb"))


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.relative_to(run_notebooks.REPO_ROOT)))
def test_committed_notebooks_print_no_absolute_path(path):
    found = [m for t in _printed(nbformat.read(path, as_version=4)) for m in ABSOLUTE_PATH.findall(t)]
    assert not found, f"{path.name} prints this machine's paths: {found[:3]}"


def test_a_profile_runs_the_notebooks_it_lists_and_refuses_others_before_any_work(tmp_path, fake_papermill):
    """cifar10 lists 00-04 (no debugging section): `make figures PROFILE=cifar10` does not start notebook 05,
    and `--only 05` is refused at once, naming the key, the value and what is valid."""
    from helpers.profiles import ProfileError

    (tmp_path / "p.yaml").write_text('base: digits\nname: listed\nnotebooks: ["00", "02"]\n')
    run_notebooks.run(str(tmp_path / "p.yaml"), output_dir=str(tmp_path / "out"))
    assert sorted(p.name for p in (tmp_path / "out" / "notebooks").glob("*.ipynb")) == [
        "00_data_and_model.ipynb", "02_lcr.ipynb"]
    with pytest.raises(ValueError, match=r"--only: 05 is not among the notebooks of profile 'cifar10' "
                                         r"\(its `notebooks`: 00 01 02 03 04\); valid: any of those"):
        run_notebooks.run("cifar10", only=["05"], output_dir=str(tmp_path / "c"))
    assert not (tmp_path / "c").exists()
    assert [p.name[:2] for p in run_notebooks.notebooks(["01", "05"])] == ["01", "05"]  # no list: all may run
    for bad in ('["07"]', "[]", "[0, 1]"):
        (tmp_path / "b.yaml").write_text(f"base: digits\nname: bad\nnotebooks: {bad}\n")
        with pytest.raises(ProfileError, match=r"'notebooks' = .* is not valid.*valid: null \(every notebook\)"):
            run_notebooks.run(str(tmp_path / "b.yaml"), output_dir=str(tmp_path / "b"))
