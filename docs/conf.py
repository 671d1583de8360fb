"""Sphinx configuration for the panfoma-sc documentation."""

from __future__ import annotations

import os
import shutil
from datetime import date
from pathlib import Path

import panfoma_sc

# -- Project information -----------------------------------------------------

project = "panfoma-sc"
author = "panfoma-sc developers"
copyright = f"{date.today().year}, {author}"
version = panfoma_sc.__version__
release = panfoma_sc.__version__

# The tutorials live in ../tutorials (MyST notebooks); copy them in so Sphinx renders (and executes) them.
_here = Path(__file__).parent
shutil.rmtree(_here / "tutorials", ignore_errors=True)
shutil.copytree(_here.parent / "tutorials", _here / "tutorials")

# -- General configuration ---------------------------------------------------

extensions = [
    "myst_nb",  # MyST markdown (.md) and notebooks (.ipynb); includes myst_parser
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

templates_path = ["_templates"]
# ``generated/`` holds the autosummary API pages: it is built (not excluded) but never committed (.gitignore).
exclude_patterns = [
    "_build",
    "jupyter_execute",
    "**.ipynb_checkpoints",
    "Thumbs.db",
    ".DS_Store",
    "model_cards/*-eval.md",
    "model_cards/*-eval-paired.md",
]
nitpicky = False

# -- MyST / myst-nb ------------------------------------------------------------

myst_enable_extensions = ["colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3
# PANFOMA_DOCS_EXECUTE=1 executes the tutorials (and caches the results); .ci/run sets it, so every tutorial
# runs on real data in CI and a failing cell fails the build.
nb_execution_mode = "cache" if os.environ.get("PANFOMA_DOCS_EXECUTE", "0") == "1" else "off"
nb_execution_timeout = 1800
nb_execution_raise_on_error = True

# -- autodoc / autosummary / napoleon -------------------------------------------

autosummary_generate = True
autosummary_imported_members = False
autodoc_member_order = "bysource"
autoclass_content = "class"

napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_ivar = True  # dataclass "Attributes" sections as :ivar:, not duplicate attribute descriptions
napoleon_use_rtype = False  # a numpydoc "Returns" line is prose here; the return type comes from the annotation
napoleon_use_param = True

# Type hints go into the parameter descriptions (sphinx.ext.autodoc's own; sphinx-autodoc-typehints is not used
# because it emits RemovedInSphinx10Warning under Sphinx 9).
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_typehints_format = "short"

# -- HTML output ---------------------------------------------------------------

html_theme = "sphinx_book_theme"
html_title = f"panfoma-sc {release}"
html_static_path = ["_static"]
html_theme_options = {
    "show_toc_level": 2,
    "navigation_with_keys": False,
}
