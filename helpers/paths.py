"""Where things live: the repository's folders, and the data-cache and output roots that a user can move
(``COMPANION_ARTIFACTS``, ``COMPANION_OUTPUT_DIR``)."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PARAMS_DIR = REPO_ROOT / "params"
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
FIGURES_DIR = REPO_ROOT / "figures"
DOCS_DIR = REPO_ROOT / "docs"
#: the committed regression references: tests/reference/<profile>/metrics.json
REFERENCE_DIR = REPO_ROOT / "tests" / "reference"


def notebook_files() -> list[Path]:
    """The notebook sequence in order: ``notebooks/NN_*.ipynb`` (NN, its two-digit prefix, is how profiles and
    ``--only`` name a notebook)."""
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def cache_root() -> Path:
    """Where cached stages go: $COMPANION_ARTIFACTS (when set and not empty), else artifacts/."""
    return Path(os.environ.get("COMPANION_ARTIFACTS") or REPO_ROOT / "artifacts")


def output_root() -> Path:
    """Where profiles' outputs go: $COMPANION_OUTPUT_DIR (when set and not empty), else figures/."""
    return Path(os.environ.get("COMPANION_OUTPUT_DIR") or FIGURES_DIR)


def in_repo(path: Path) -> str | None:
    """``path`` relative to the repository (what ``git checkout --`` takes), or None outside it."""
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT.resolve()))
    except ValueError:
        return None


#: the folder variables a user may set; relative values are taken from where the user ran the command
FOLDER_VARIABLES = ("COMPANION_OUTPUT_DIR", "COMPANION_ARTIFACTS", "COMPANION_DATA_DIR")


def absolute_folder_variables() -> None:
    """Make the folder variables absolute, relative to the current directory (where the user typed the
    command), before kernels or worker processes start elsewhere (notebook kernels run in notebooks/)."""
    for var in FOLDER_VARIABLES:
        if os.environ.get(var):
            os.environ[var] = str(Path(os.environ[var]).expanduser().absolute())
