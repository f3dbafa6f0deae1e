"""The API reference's completeness check, and aliases for re-exported names.

purelearn's public surface is the rule ``tests/surface.py`` states: a module is public
when no part of its dotted name starts with ``_``, and its public names are its
``__all__``. Every such name must be a documented Python object of this site, as
``purelearn.<name>`` or ``purelearn.<module>.<name>``; at the end of reading, any
that is not is a warning, so the build (``-W``) fails.

Many submodule names are the same object as a top-level one (``purelearn.optimizers.adam``
is ``purelearn.adam``). Those are documented once, under their *home* name, and the
module page lists the other names with the ``purelearn-aliases`` directive, which renders
a table linking each to its home and registers the name as an alias, so that a
cross-reference to either name resolves.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path
from types import ModuleType
from typing import Any

from docutils import nodes
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

PACKAGE = "purelearn"


def public_modules() -> list[ModuleType]:
    """The package and every submodule whose dotted name has no ``_`` part."""
    package = importlib.import_module(PACKAGE)
    modules = [package]
    for info in pkgutil.walk_packages(package.__path__, PACKAGE + "."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        modules.append(importlib.import_module(info.name))
    return modules


def public_names() -> dict[str, tuple[ModuleType, str, Any]]:
    """``dotted name -> (module, name, object)`` for every public module and name."""
    names: dict[str, tuple[ModuleType, str, Any]] = {}
    for module in public_modules():
        names[module.__name__] = (module, "", module)
        for name in getattr(module, "__all__", ()):
            names[f"{module.__name__}.{name}"] = (module, name, getattr(module, name))
    return names


def _shareable(obj: Any) -> bool:
    # Identity says "the same object" for functions, classes and containers, but two
    # constants that are equal small ints or interned strings are not one name.
    return not isinstance(obj, (int, float, complex, str, bytes, type(None)))


def home_name(module: ModuleType, name: str, obj: Any) -> str:
    """The one public name under which ``obj`` is documented in full.

    The top-level name when the package exports the object, else the public module
    that defines it, else the first public module (in walk order) exporting it.
    """
    own = f"{module.__name__}.{name}"
    if inspect.ismodule(obj) or not _shareable(obj):
        return own
    package = importlib.import_module(PACKAGE)
    if name in getattr(package, "__all__", ()) and getattr(package, name) is obj:
        return f"{PACKAGE}.{name}"
    candidates = [
        f"{m.__name__}.{n}"
        for m in public_modules()
        for n in getattr(m, "__all__", ())
        if getattr(m, n) is obj
    ]
    for candidate in candidates:
        if candidate.rsplit(".", 1)[0] == getattr(obj, "__module__", None):
            return candidate
    return candidates[0] if candidates else own


def _objtype(obj: Any) -> str:
    if inspect.isclass(obj):
        return "exception" if issubclass(obj, BaseException) else "class"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return "function"
    return "data"


def _summary(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    if not (inspect.isclass(obj) or callable(obj)) and doc == inspect.getdoc(type(obj)):
        return ""  # a constant has no docstring of its own, only its type's
    return doc.strip().split("\n\n", 1)[0].replace("\n", " ")


class AliasesDirective(SphinxDirective):
    """``.. purelearn-aliases:: purelearn.optimizers`` with one public name a line.

    Each name must be documented elsewhere (its home name differs); the table links
    to the home, and the name becomes a cross-reference target here.
    """

    required_arguments = 1
    has_content = True

    def run(self) -> list[nodes.Node]:
        modname = self.arguments[0]
        module = importlib.import_module(modname)
        domain = self.env.domains["py"]
        table = nodes.table(classes=["autosummary", "longtable", "purelearn-aliases"])
        group = nodes.tgroup(cols=2)
        table += group
        group += nodes.colspec(colwidth=30)
        group += nodes.colspec(colwidth=70)
        body = nodes.tbody()
        group += body
        result: list[nodes.Node] = [table]
        for line in self.content:
            name = line.strip()
            if not name:
                continue
            fullname = f"{modname}.{name}"
            if name not in getattr(module, "__all__", ()):
                logger.warning(
                    "%s is not in %s.__all__", name, modname, location=self.get_location()
                )
                continue
            obj = getattr(module, name)
            home = home_name(module, name, obj)
            if home == fullname:
                logger.warning(
                    "%s is documented here in full, not an alias: list it in autosummary",
                    fullname,
                    location=self.get_location(),
                )
                continue
            node_id = "alias-" + fullname.replace(".", "-").lower()
            objtype = _objtype(obj)
            # autodoc already registers a class's defining name (its :canonical: option)
            registered_by_autodoc = inspect.isclass(obj) and (
                f"{obj.__module__}.{obj.__qualname__}" == fullname
            )
            if not registered_by_autodoc:
                domain.note_object(fullname, objtype, node_id, aliased=True)
            row = nodes.row(ids=[node_id])
            left = nodes.entry()
            left += nodes.paragraph("", "", nodes.literal(name, name))
            right = nodes.entry()
            para = nodes.paragraph()
            para += nodes.Text("Alias of ")
            xref = addnodes.pending_xref(
                "",
                nodes.literal(home, home, classes=["xref", "py", "py-obj"]),
                refdomain="py",
                reftype="obj",
                reftarget=home,
                refexplicit=True,
                refwarn=True,
            )
            para += xref
            summary = _summary(obj)
            if summary:
                # the summary is reStructuredText (``literals``, :func:`roles`)
                inline, messages = self.state.inline_text(summary, self.lineno)
                para += nodes.Text(": ")
                para += inline
                result += messages
            right += para
            row += left
            row += right
            body += row
        return result


def check_documented(app: Sphinx, env: BuildEnvironment) -> None:
    """Every public module and name is a documented object (or an alias of one)."""
    documented = set(env.domains["py"].objects)
    missing = sorted(name for name in public_names() if name not in documented)
    for name in missing:
        logger.warning(
            "public name %s is not documented in the API reference (docs/api/)",
            name,
            type="purelearn",
            subtype="undocumented",
        )
    if not missing:
        logger.info("purelearn_api: all %d public names are documented", len(public_names()))


def skip_namedtuple_fields(
    app: Sphinx, what: str, name: str, obj: Any, skip: bool, options: Any
) -> bool | None:
    # a NamedTuple's fields carry "Alias for field number N" as their docstring; the
    # class docstring already describes them
    doc = getattr(obj, "__doc__", None) or ""
    if isinstance(doc, str) and doc.startswith("Alias for field number"):
        return True
    return None


def drop_type_docstring(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    # A constant without a ``#:`` comment would show its type's docstring (a dict's
    # "dict() -> new empty dictionary", an Experiment record's class docstring): a
    # constant's page describes the constant or says nothing.
    if what in {"data", "attribute"} and not inspect.isclass(obj):
        type_doc = inspect.getdoc(type(obj)) or ""
        if type_doc and "\n".join(lines).strip() == type_doc.strip():
            lines.clear()


def _listed_stubs(api_dir: Path) -> set[str]:
    """The names the API pages' autosummary tables list (each one a generated stub)."""
    listed: set[str] = set()
    for page in api_dir.glob("*.rst"):
        inside = False
        module = ""
        for line in page.read_text(encoding="utf-8").splitlines():
            if line.startswith(".. currentmodule::"):
                module = line.split("::", 1)[1].strip()
            if line.startswith(".. autosummary::"):
                inside = True
                continue
            if inside and line and not line.startswith(" "):
                inside = False
            if inside and line.strip() and not line.strip().startswith(":"):
                listed.add(f"{module}.{line.strip().lstrip('~')}")
    return listed


def remove_stale_stubs(app: Sphinx) -> None:
    # A stub generated for a name since removed from the API pages would still be read
    # (and still document the name), hiding it from the check below; CI's fresh clone
    # has none, a working copy may. Only unlisted stubs go, so concurrent builds of one
    # checkout never lose a page they need.
    api_dir = Path(app.srcdir) / "api"
    generated = api_dir / "generated"
    if not generated.is_dir():
        return
    listed = _listed_stubs(api_dir)
    for stub in generated.glob("*.rst"):
        if stub.stem not in listed:
            logger.info("purelearn_api: removing stale stub %s", stub.name)
            stub.unlink(missing_ok=True)


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("purelearn-aliases", AliasesDirective)
    # before autosummary writes this build's stubs (priority 500)
    app.connect("builder-inited", remove_stale_stubs, priority=400)
    app.connect("env-check-consistency", check_documented)
    app.connect("autodoc-skip-member", skip_namedtuple_fields)
    # before napoleon (priority 500) reads a type's docstring as the constant's
    app.connect("autodoc-process-docstring", drop_type_docstring, priority=400)
    # env_version: a change to what the directive records re-reads every page
    return {
        "version": "1",
        "env_version": 2,
        "parallel_read_safe": True,
        "parallel_write_safe": True,
    }
