"""Which folders install as which packages (everything else is in pyproject.toml).

The top-level layout is fixed (cxrsynth/, client/, server/, privacy/ side by side), but only one
name is installed: the three Flower-and-privacy folders become subpackages of cxrsynth, so
`client/app.py` is `cxrsynth.client.app`. Top-level `client`, `server` or `privacy` packages would
collide with other installed distributions. Subpackages are found, not listed, so a new family
folder under cxrsynth/models/ needs no change here.
"""

from setuptools import find_namespace_packages, setup

PACKAGE_DIR = {
    "cxrsynth": "cxrsynth",
    "cxrsynth.client": "client",
    "cxrsynth.server": "server",
    "cxrsynth.privacy": "privacy",
}


def packages() -> list[str]:
    # Namespace discovery, so that data folders without an __init__.py (a family's presets/, the
    # page templates) are packages too and pyproject's package-data reaches their files.
    found = []
    for name, folder in PACKAGE_DIR.items():
        found += [name] + [f"{name}.{sub}" for sub in find_namespace_packages(folder, exclude=["*__pycache__*"])]
    return found


setup(package_dir=PACKAGE_DIR, packages=packages())
