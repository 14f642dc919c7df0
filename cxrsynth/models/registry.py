"""The registry of model families: a family is one folder that declares itself.

A family folder (a Python package) holds, in its `__init__.py`, one `FAMILY = Family(...)`: its
name, its pydantic config class, how to import its model class, its presets folder and what it
can do. `Family.in_folder(__name__, ...)` fills in the model class (`model.py`'s `Model`) and the
presets folder (`presets/`) of a folder laid out as the built-in ones. Config loading, the CLI, the demo, evaluation and the benchmarks ask the registry; none
of them names a family.

Families are found in three places, in this order:

1. every sub-package of `cxrsynth.models` that defines `FAMILY` (the built-in ones);
2. installed distributions that declare an entry point in the group `cxrsynth.families`, whose
   value is a module defining `FAMILY` (or the `Family` object itself), e.g. in pyproject.toml
   `[project.entry-points."cxrsynth.families"] vqgan = "my_package.vqgan"`;
3. the environment variable `CXRSYNTH_FAMILIES`: module names or family folder paths, separated
   by the path separator (`:` on Linux). A folder path is imported as a package of its own, so a
   family can live outside any installed package. The variable is read by every process that
   loads a config, so simulated Flower sites and subprocesses find the same families.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import pkgutil
import sys
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from pydantic import BaseModel

from cxrsynth.errors import ConfigError

if TYPE_CHECKING:  # torch is imported only when a model is built
    from cxrsynth.data.records import Record
    from cxrsynth.models.base import GenerativeModel

ENTRY_POINT_GROUP = "cxrsynth.families"
ENV_VAR = "CXRSYNTH_FAMILIES"


def _never(config: Any) -> bool:
    return False


def _always(config: Any) -> bool:
    return True


@dataclass(frozen=True)
class Probe:
    """A measurement of the model's latent space that evaluation runs on a checkpoint of the
    family (`cxrsynth evaluate --checkpoint`): `run(model, train, holdout)` returns a mapping of
    column -> value, drawn as one table row under `title` with `note` beneath it."""

    title: str
    note: str
    run: Callable[["GenerativeModel", Sequence["Record"], Sequence["Record"]], dict[str, float]]


@dataclass(frozen=True)
class Family:
    """What a family folder declares about itself.

    `config`: its frozen pydantic config class, with a field `family: Literal[<name>]`.
    `load_model`: returns the model class (a `cxrsynth.models.base.GenerativeModel`); called on
    first build, so reading a config never imports torch.
    `presets`: a folder of `<preset>.yaml` run configs, offered as `<name>-<preset>`.
    `writes_reports(config)`, `has_lateral(config)`: whether generated records carry report text
    and a lateral image with that config.
    `probe`: an optional latent-space measurement that evaluation runs on a checkpoint.
    """

    name: str
    config: type[BaseModel]
    load_model: Callable[[], type["GenerativeModel"]]
    presets: Optional[Path] = None
    description: str = ""
    writes_reports: Callable[[Any], bool] = _always
    has_lateral: Callable[[Any], bool] = _never
    probe: Optional[Probe] = None
    source: str = field(default="", compare=False)

    @classmethod
    def in_folder(cls, package: str, **declared: Any) -> "Family":
        """The family of package `package` (its `__init__.py` passes `__name__`), laid out as the
        built-in ones: its model class `Model` in `model.py`, imported on first build, and its
        presets in `presets/`. `declared`: the other fields (name, config, description, ...)."""
        folder = Path(sys.modules[package].__file__).parent

        def load_model() -> type["GenerativeModel"]:
            return importlib.import_module(f"{package}.model").Model

        return cls(load_model=load_model, presets=folder / "presets", **declared)

    def model_class(self) -> type["GenerativeModel"]:
        return self.load_model()

    def preset_files(self) -> dict[str, Path]:
        """`<name>-<preset>` -> YAML path."""
        if self.presets is None or not Path(self.presets).is_dir():
            return {}
        return {f"{self.name}-{p.stem}": p for p in sorted(Path(self.presets).glob("*.yaml"))}


_registered: dict[str, Family] = {}
_found = False


class FamilyError(ConfigError):
    """A family cannot be found or declares itself wrongly (exit code 2)."""


def register(family: Family) -> Family:
    """Add `family`; a second family of the same name from elsewhere is refused."""
    if not isinstance(family, Family):
        raise FamilyError(
            f"{family!r} is not a cxrsynth.models.registry.Family; a family module defines FAMILY = Family(...)."
        )
    known = _registered.get(family.name)
    if known is not None and known is not family and known.source != family.source:
        raise FamilyError(
            f"model family {family.name!r} is declared twice: by {known.source or 'a caller'} and by {family.source or 'a caller'}."
        )
    annotation = family.config.model_fields.get("family")
    if annotation is None or annotation.default != family.name:
        raise FamilyError(
            f"{family.source or family.name}: its config class {family.config.__name__} needs a field `family: Literal[{family.name!r}] = {family.name!r}`."
        )
    _registered[family.name] = family
    return family


def _declared(module: Any, where: str) -> Family:
    family = module if isinstance(module, Family) else getattr(module, "FAMILY", None)
    if family is None:
        raise FamilyError(f"{where}: defines no FAMILY = cxrsynth.models.registry.Family(...).")
    if not family.source:
        object.__setattr__(family, "source", where)
    return family


def _import_folder(path: Path):
    """Import a family folder that is on no import path as a package of its own."""
    path = path.resolve()
    init = path / "__init__.py"
    if not init.is_file():
        raise FamilyError(f"{ENV_VAR}: {path} is not a family folder (it has no __init__.py).")
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    name = f"cxrsynth_family_{path.name}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(path)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load_from(item: str) -> Family:
    """The family a module name or a folder path declares, registered."""
    if os.sep in item or Path(item).is_dir():
        module = _import_folder(Path(item))
    else:
        try:
            module = importlib.import_module(item)
        except ImportError as e:
            raise FamilyError(f"{ENV_VAR}: cannot import family module {item!r} ({e}).") from None
    return register(_declared(module, item))


def _find() -> None:
    global _found
    if _found:
        return
    _found = True
    import cxrsynth.models as package

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.ispkg:
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            if hasattr(module, "FAMILY"):
                register(_declared(module, module.__name__))
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        register(_declared(ep.load(), f"entry point {ep.name} = {ep.value}"))
    for item in filter(None, os.environ.get(ENV_VAR, "").split(os.pathsep)):
        load_from(item)


def families() -> dict[str, Family]:
    """Every registered family by name, built-in ones first."""
    _find()
    return dict(_registered)


def names() -> list[str]:
    return list(families())


def get(name: str) -> Family:
    found = families()
    if name not in found:
        raise FamilyError(
            f"unknown model family {name!r}; the registered families are {', '.join(found)} "
            f"(a family of your own: a folder named in {ENV_VAR}, or an entry point in the group {ENTRY_POINT_GROUP!r})."
        )
    return found[name]


def for_config(model_config: Any) -> Family:
    return get(model_config.family)
