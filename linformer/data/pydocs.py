"""`pydocs`: English text of the running Python's standard-library docs.

A corpus that exists offline on every machine that has Python, so smoke tests
and small pretraining runs need no download. One document per module (its
module, class and function docstrings, in source order, separated by blank
lines) and one per pydoc topic (`pydoc_data.topics`, the language reference
sections behind `help('if')`).

Docstrings of pure-Python modules are read with `ast` from the source files:
nothing is imported, so modules with import side effects (`antigravity`,
`this`, GUI toolkits) are harmless. Modules without source (built-in and C
extension modules such as `math` or `itertools`) are imported to read their
`__doc__`s; the few that are unsafe to import are skipped.

The corpus depends on the Python version that prepares it (CPython 3.11: ~640
documents, ~330k words, 2.2M characters). The split is a stable hash of the document id: ~5%
`validation`, the rest `train`.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import os
import pkgutil
import sys
import sysconfig
import warnings
from collections.abc import Iterator

import tensorflow_datasets as tfds

VALIDATION_PERCENT = 5

# Top-level packages that are tests, GUIs, demos or build tooling: not prose
# about the library, or unsafe to import.
_SKIP_PACKAGES = frozenset(
  {
    "test",
    "tests",
    "idlelib",
    "tkinter",
    "turtle",
    "turtledemo",
    "lib2to3",
    "ensurepip",
    "venv",
    "__phello__",
    "__hello__",
    "antigravity",
    "this",
    "pydoc_data",
    "xxlimited",
    "xxlimited_35",
    "xxsubtype",
    "_testcapi",
    "_testinternalcapi",
    "_testbuffer",
    "_testimportmultiple",
    "_testmultiphase",
    "_testclinic",
    "_tkinter",
    "readline",
    "_curses",
    "_curses_panel",
    "curses",
    "_ctypes_test",
    "_xxtestfuzz",
    "_xxsubinterpreters",
  }
)


def _skipped(module_name: str) -> bool:
  parts = module_name.split(".")
  return parts[0] in _SKIP_PACKAGES or any(
    p in ("test", "tests", "idle_test") or p.startswith("test_") for p in parts[1:]
  )


def _source_docstrings(path: str) -> list[str]:
  """Module, class and function docstrings of a source file, in source order."""
  with open(path, "rb") as f:
    tree = ast.parse(f.read())
  docs = []
  for node in ast.walk(tree):  # Breadth-first; sorted by position below.
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
      doc = ast.get_docstring(node, clean=True)
      if doc:
        docs.append((getattr(node, "lineno", 0), doc))
  return [doc for _, doc in sorted(docs, key=lambda d: d[0])]


def _imported_docstrings(module_name: str) -> list[str]:
  """Docstrings of a module without Python source (built-in or C extension)."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Deprecated modules warn on import.
    module = importlib.import_module(module_name)
  docs = [module.__doc__]
  for name, obj in sorted(vars(module).items()):
    if name.startswith("_") or getattr(obj, "__module__", None) not in (module_name, None):
      continue
    if inspect.isclass(obj):
      docs.append(obj.__doc__)
      docs.extend(
        getattr(member, "__doc__", None)
        for member_name, member in sorted(vars(obj).items())
        if not member_name.startswith("_") and callable(member)
      )
    elif callable(obj):
      docs.append(obj.__doc__)
  return [inspect.cleandoc(d) for d in docs if isinstance(d, str) and d.strip()]


def _stdlib_modules() -> Iterator[tuple[str, str | None]]:
  """(module name, source path or None) for every documented stdlib module."""
  for name in sorted(sys.builtin_module_names):
    if name in sys.stdlib_module_names and not _skipped(name):
      yield name, None

  def walk(path: str, prefix: str) -> Iterator[tuple[str, str | None]]:
    for info in sorted(pkgutil.iter_modules([path], prefix), key=lambda m: m.name):
      if _skipped(info.name):
        continue
      if not prefix and info.name not in sys.stdlib_module_names:
        continue  # site-packages and friends live next to the stdlib.
      location = os.path.join(path, info.name.rpartition(".")[2])
      if info.ispkg:
        yield info.name, os.path.join(location, "__init__.py")
        yield from walk(location, info.name + ".")
      elif os.path.exists(location + ".py"):
        yield info.name, location + ".py"
      else:
        yield info.name, None  # A C extension module in lib-dynload.

  for directory in (
    sysconfig.get_paths()["stdlib"],
    sysconfig.get_paths()["platstdlib"] + "/lib-dynload",
  ):
    if os.path.isdir(directory):
      yield from walk(directory, "")


def iter_documents() -> Iterator[tuple[str, str]]:
  """Yields (id, text) for every stdlib module and pydoc topic."""
  seen = set()
  for name, path in _stdlib_modules():
    if name in seen:
      continue
    seen.add(name)
    try:
      docs = _source_docstrings(path) if path else _imported_docstrings(name)
    except Exception:  # pylint: disable=broad-except
      continue  # Unparsable source or a module that does not import here.
    if docs:
      yield f"module:{name}", "\n\n".join(docs)

  from pydoc_data import topics  # pylint: disable=g-import-not-at-top

  for name, text in sorted(topics.topics.items()):
    if text.strip():
      yield f"topic:{name}", text.strip()


def split_of(doc_id: str) -> str:
  """Deterministic split assignment, stable across runs and machines."""
  bucket = int(hashlib.sha1(doc_id.encode()).hexdigest(), 16) % 100
  return "validation" if bucket < VALIDATION_PERCENT else "train"


class Pydocs(tfds.core.GeneratorBasedBuilder):
  """Python standard-library docstrings and pydoc topics."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description=__doc__,
      features=tfds.features.FeaturesDict(
        {"id": tfds.features.Text(), "text": tfds.features.Text()}
      ),
      supervised_keys=None,
      homepage="https://docs.python.org/3/library/",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    documents = list(iter_documents())
    return {split: self._generate_examples(documents, split) for split in ("train", "validation")}

  def _generate_examples(self, documents, split):
    for doc_id, text in documents:
      if split_of(doc_id) == split:
        yield doc_id, {"id": doc_id, "text": text}
