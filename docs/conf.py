"""Sphinx configuration for the psyrun documentation."""

from __future__ import annotations

import os
import sys

# Build from the checkout even when psyrun is not installed.
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

import psyrun  # noqa: E402

project = "psyrun"
author = "the psyrun developers"
copyright = "the psyrun developers"
version = psyrun.__version__
release = psyrun.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "numpydoc",
]

source_suffix = {".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "conftest.py", "architecture.md"]
templates_path: list[str] = []
html_static_path = ["_static"]
html_theme = "alabaster"
html_title = f"psyrun {release}"

# The API pages list members explicitly; numpydoc's own member tables would
# duplicate them and need autosummary stubs.
numpydoc_show_class_members = False
numpydoc_xref_param_type = False
numpydoc_validation_checks: set[str] = set()
autodoc_member_order = "bysource"
autodoc_typehints = "none"
autodoc_default_options = {"members": True, "show-inheritance": True}
# Heavy optional libraries are imported inside functions only, so nothing to mock.
autodoc_mock_imports: list[str] = []

pygments_style = "sphinx"
