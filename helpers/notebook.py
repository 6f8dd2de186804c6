"""The notebooks' parameters: ``profile``, ``overrides`` and ``output_dir`` (the cell tagged
``parameters``), as papermill passes them (``-p NAME VALUE``, ``-y``, ``-f params.yaml``).

papermill only warns (``Passed unknown parameter: profle``) about a name the parameters cell does not
define, injects it anyway and runs the notebook with the default profile.  :func:`check_parameters`,
called first in each notebook's setup cell, turns that into an error before any work.
"""
from __future__ import annotations

import ast
import difflib
import sys
from pathlib import Path

from helpers.profiles import ProfileError

#: the names each notebook's parameters cell defines
PARAMETERS = ("profile", "overrides", "output_dir")


def injected_names(history) -> list[str]:
    """Names assigned by papermill's injected cell(s) (source starting with ``# Parameters``) in the
    kernel's input history (IPython's ``In``); [] when the notebook was not run by papermill."""
    names: list[str] = []
    for source in history or []:
        if not isinstance(source, str) or not source.lstrip().startswith("# Parameters"):
            continue
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in tree.body:
            targets = (node.targets if isinstance(node, ast.Assign)
                       else [node.target] if isinstance(node, ast.AnnAssign) else [])
            names += [t.id for t in targets if isinstance(t, ast.Name)]
    return names


def check_parameters(namespace: dict) -> None:
    """Raise :class:`ProfileError` when papermill injected a parameter the notebook does not have
    (``namespace``: the notebook's ``globals()``)."""
    unknown = [n for n in injected_names(namespace.get("In")) if n not in PARAMETERS]
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(name, PARAMETERS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ProfileError(f"notebook parameter {name!r} is unknown{hint}; valid: {', '.join(PARAMETERS)} "
                           "(e.g. papermill in.ipynb out.ipynb -p profile cifar10)")


def _no_op_cell(lines: list[str]) -> list[str]:
    """An IPython input transformer that turns a cell into nothing (:func:`step_aside`)."""
    return []


def step_aside(reason: str | None, exp=None, notebook: str = "") -> bool:
    """Stop a notebook cleanly when its method cannot apply to the experiment's model: with a ``reason``,
    show it (Markdown), record it in ``metrics.json`` (``skipped.<notebook>``, read by the batch runner
    and the report) and turn every later cell of this kernel into an empty one, so the notebook finishes
    without error and without output below the reason.  Call it as the last statement of a cell (the
    cell that calls it has already been parsed).  Returns True when the notebook steps aside."""
    if reason is None:
        m = exp.metrics() if exp is not None else {}
        if notebook in m.get("skipped", {}):  # an earlier run's reason is stale
            m["skipped"].pop(notebook)
            exp.update_metrics(m, fresh=True)
        return False
    message = f"**This notebook steps aside; the cells below do not run.** {reason}"
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display
    except ImportError:  # pragma: no cover - IPython is a dependency of the notebooks extra
        get_ipython = None
    shell = get_ipython() if get_ipython is not None else None
    if shell is not None:
        display(Markdown(message))
        if _no_op_cell not in shell.input_transformers_post:
            shell.input_transformers_post.append(_no_op_cell)
    else:
        print(message)
    if exp is not None:
        exp.update_metrics({"skipped": {notebook or "notebook": reason}})
    return True


class PlainTcpWarningFilter:
    """A logging filter for the kernel (``.venv/etc/ipython/ipython_kernel_config.py``, written by
    ``make setup``): drops ipykernel's "Kernel is running over TCP without encryption" warning and
    nothing else.  The plain papermill CLI (nbclient) starts kernels over localhost TCP without
    CurveZMQ keys and offers no setting to provision them, so the warning would appear on every
    run with nothing a user could do; ``make figures`` (helpers.tools.run_notebooks) encrypts instead."""

    def filter(self, record) -> bool:
        return "running over TCP without encryption" not in record.getMessage()


#: the kernel configuration ``make setup`` writes into the venv (IPython reads <sys.prefix>/etc/ipython)
KERNEL_CONFIG = '''# Written by `make setup` (helpers/notebook.py, KERNEL_CONFIG); do not edit.
# Drops only ipykernel's plain-TCP transport warning, which the papermill CLI triggers on every run.
c.IPKernelApp.logging_config = {
    "filters": {"plain_tcp": {"()": "helpers.notebook.PlainTcpWarningFilter"}},
    "handlers": {"console": {"filters": ["plain_tcp"]}},
}
'''


def write_kernel_config(prefix: str | None = None) -> str:
    """Write :data:`KERNEL_CONFIG` to ``<prefix>/etc/ipython/ipython_kernel_config.py`` (prefix: this
    environment's ``sys.prefix``); returns the path."""
    path = Path(prefix or sys.prefix) / "etc" / "ipython" / "ipython_kernel_config.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(KERNEL_CONFIG)
    return str(path)


#: JupyterLab settings ``make setup`` writes into the venv: no autosave, so that running a committed
#: notebook by hand does not write its new outputs over the committed, nbval-checked file unless the user
#: saves it on purpose (File > Save)
LAB_OVERRIDES = {"@jupyterlab/docmanager-extension:plugin": {"autosave": False}}


def write_lab_settings(prefix: str | None = None) -> str:
    """Write :data:`LAB_OVERRIDES` to ``<prefix>/share/jupyter/lab/settings/overrides.json``; returns the path."""
    import json

    path = Path(prefix or sys.prefix) / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(LAB_OVERRIDES, indent=2) + "\n")
    return str(path)
