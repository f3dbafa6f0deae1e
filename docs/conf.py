"""Sphinx configuration for purelearn's documentation site.

The one build command (CI runs it from a fresh clone, every notebook executed)::

    sphinx-build -W --keep-going -n -b html docs docs/_build/html

and the headless-browser check of the result::

    python docs/check_site.py docs/_build/html
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# docs/_ext holds this site's own extensions (the public-name check and its aliases)
sys.path.insert(0, str(HERE / "_ext"))
# the package itself, importable from a checkout without installing it
sys.path.insert(0, str(HERE.parent))

import purelearn  # noqa: E402

project = "purelearn"
author = "purelearn authors"
copyright = "purelearn authors"
release = version = purelearn.__version__ if hasattr(purelearn, "__version__") else "0.1.0"

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    # the package's import name has hyphens; Sphinx imports it by that name. It
    # copies its bundled MathJax into _static/mathjax and points mathjax_path there,
    # so math renders with no CDN
    "sphinx-mathjax-offline",
    "purelearn_api",
]

exclude_patterns = [
    "_build",
    "**/.jupyter_cache",
    "**/jupyter_execute",
    "**.ipynb_checkpoints",
    "_ext",
    "Thumbs.db",
    ".DS_Store",
]

# --- MyST and notebook execution ------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3
# "cache": only notebooks whose code changed re-execute (jupyter-cache beside the output
# directory). A fresh clone has an empty cache, so everything executes; force it anyway
# with `-D nb_execution_mode=force`.
nb_execution_mode = "cache"
nb_execution_raise_on_error = True
nb_execution_allow_errors = False
# per cell; a page is meant to run in about a minute on two cores, this catches a hang
nb_execution_timeout = 300
nb_execution_show_tb = True
nb_merge_streams = True
templates_path = ["_templates"]

# --- the API reference ------------------------------------------------------------------
# the module pages, named explicitly: with `True` autosummary reads the list of documents
# from the previous build's environment, which misses a page added since
autosummary_generate = sorted(str(p.relative_to(HERE)) for p in (HERE / "api").glob("*.rst"))
autosummary_imported_members = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_default_options = {"show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_ivar = True
add_module_names = True
python_use_unqualified_type_names = True

# --- cross-references -------------------------------------------------------------------
nitpicky = True
# The site builds offline, with no intersphinx inventories, so names from the libraries
# purelearn builds on (and the standard library's) cannot be resolved. Ignore references
# into those packages only; every purelearn name must resolve.
nitpick_ignore_regex = [
    (r"py:.*", r"(jax|jaxlib|optax|flax|numpy|np|jnp|chex|optuna|matplotlib|mlxtend)(\..*)?"),
    # the standard library's names in signatures (Sequence, Path, ...), for the same reason
    (r"py:.*", r"(collections|os|pathlib|typing|types|enum|dataclasses|argparse)(\..*)?"),
]
# Types that purelearn's modules import only for type checking reach Sphinx as bare
# names (the annotation strings cannot be evaluated at run time); they are matplotlib's
# and jax's classes above, purelearn.experiments' private (header, rows) alias, or
# purelearn._types.PyTree (a pytree of arrays, typed Any).
# (autodoc_type_aliases would spell them out, but Sphinx 9 renders such an alias inside
# a generic as "TypeAliasForwardRef(...)".)
nitpick_ignore = [
    ("py:class", "Figure"),
    ("py:class", "Axes"),
    ("py:class", "Line2D"),
    ("py:class", "NamedSharding"),
    ("py:class", "Table"),
    ("py:class", "PyTree"),
]
# purelearn.optimizers' own aliases, defined exactly as optax's
autodoc_type_aliases = {
    "ScalarOrSchedule": "optax.ScalarOrSchedule",
    "MaskOrFn": "optax.MaskOrFn",
}

# --- HTML -------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = "purelearn"
html_theme_options = {
    "show_toc_level": 2,
    "use_download_button": False,
    "use_fullscreen_button": False,
    "use_repository_button": False,
    # the site is offline: no launch buttons to Binder/Colab
    "launch_buttons": {},
}
html_last_updated_fmt = None
# the theme reads the colour mode from localStorage, falling back to this; left empty it
# logs a console error on a reader's first visit
html_context = {"default_mode": "auto"}
