"""cxrsynth: federated, privacy-aware synthetic chest X-ray data.

The folders client/, server/ and privacy/ sit beside this one in the source tree and install as
cxrsynth.client, cxrsynth.server and cxrsynth.privacy (setup.py). Flower runs an app from its
unpacked bundle (FAB), which keeps the source layout and is put first on sys.path: there, and in
a plain checkout, the three subpackages are taken from the folders beside this one, so the code
that runs is the code that was bundled and signed.
"""

import importlib.abc
import importlib.machinery
import sys
from pathlib import Path

_BESIDE = ("client", "server", "privacy")


class _BesideFinder(importlib.abc.MetaPathFinder):
    def __init__(self, tree: Path):
        self.tree = str(tree)

    def find_spec(self, fullname, path=None, target=None):
        parent, _, name = fullname.partition(".")
        if parent != __name__ or name not in _BESIDE:
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, [self.tree])


def _source_tree() -> Path | None:
    here = Path(__file__).resolve().parent
    if all((here / name / "__init__.py").is_file() for name in _BESIDE):
        return None  # installed: the subpackages are inside this folder
    if all((here.parent / name / "__init__.py").is_file() for name in _BESIDE):
        return here.parent
    return None


_tree = _source_tree()
if _tree is not None and not any(isinstance(f, _BesideFinder) and f.tree == str(_tree) for f in sys.meta_path):
    sys.meta_path.insert(0, _BesideFinder(_tree))
