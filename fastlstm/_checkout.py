"""Make ``fastlstm.kernels`` importable from a plain checkout of the repository.

The wheel (and an editable install) maps the top-level ``kernels/`` folder to
``fastlstm.kernels``; a clone that was never pip-installed, such as the copy a GPU machine
without network receives, has no such package folder. Importing this module (``fastlstm``
does, first thing) appends a finder for exactly that one name to ``sys.meta_path``; it comes
last, so an installed package or editable mapping always wins.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path


class _CheckoutKernelsFinder(importlib.abc.MetaPathFinder):
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def find_spec(self, fullname, path, target=None):
        if fullname != "fastlstm.kernels":
            return None
        return importlib.util.spec_from_file_location(
            fullname, self.folder / "__init__.py", submodule_search_locations=[str(self.folder)]
        )


_package = Path(__file__).resolve().parent
_kernels = _package.parent / "kernels"
if not (_package / "kernels").is_dir() and (_kernels / "__init__.py").is_file():
    sys.meta_path.append(_CheckoutKernelsFinder(_kernels))
