"""Sphinx configuration of fec-mm's documentation (``make docs``).

Pages are Markdown (MyST, as OpenMMLab's docs); the API reference is
generated from the docstrings (autodoc + napoleon for their ``Args:`` and
``Returns:`` sections). ``make docs`` runs with ``-W``: every warning
(a broken link, a page outside the toctree, a docstring that does not parse)
fails the build.
"""
import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
sys.path.insert(0, ROOT)

project = 'fec-mm'
author = 'fec-mm contributors'
copyright = '2026, fec-mm contributors'

extensions = [
    'myst_parser',
    'sphinx.ext.autodoc',
    'sphinx.ext.napoleon',
    'sphinx.ext.mathjax',
]
source_suffix = {'.md': 'markdown'}
root_doc = 'index'
# Script outputs (docs/benchmarks/*.md) are linked from the measurement notes
# as files, not built as pages.
exclude_patterns = ['_build', 'benchmarks/**']

myst_enable_extensions = ['dollarmath', 'colon_fence']
# Links to sections (`page.md#2-four-stages`) as GitHub renders them.
myst_heading_anchors = 3

autodoc_member_order = 'bysource'
autodoc_typehints = 'description'
autodoc_default_options = {}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = 'furo'
html_title = 'fec-mm'
html_static_path = []
