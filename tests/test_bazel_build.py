"""The Bazel BUILD files stay in sync with the tree: every test module has a py_test, every
entry point a py_binary, every library file a py_library. Needs no Bazel.

The BUILD files are evaluated here as the Python they are syntactically (Starlark's subset):
`glob()` is re-implemented with Bazel's rules (no descent into subpackages or directories
listed in .bazelignore) and every rule call is recorded, so list comprehensions over globs
are evaluated exactly as Bazel would. The file lists come from the source tree (the real
path of this file), also when the test runs under `bazel test` from a runfiles tree.
"""

import fnmatch
import importlib.util
import os
import re
import sys

import pytest

# The tree being built: under `bazel test` this file is a symlink into the source tree.
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
# The tree the test runs from: the runfiles tree under Bazel, else the source tree.
RUN_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Entry points named by the product brief; each needs a py_binary even before the module
# exists. Any other module with an `if __name__ == "__main__":` block needs one as well.
REQUIRED_BINARIES = {
    "train": "tfreid.train",
    "evaluate": "tfreid.evaluate",
    "export": "tfreid.export",
    "convert": "data_pipelines.convert",
    "synthetic": "data_pipelines.synthetic",
}
LIBRARIES = ("tfreid", "experiments", "data_pipelines")
# Rules and macros BUILD files may call; the macros come from //tools/bazel:defs.bzl.
NATIVE_RULES = ("package", "exports_files", "py_library", "py_binary", "py_test", "filegroup",
                "alias")
MAIN_GUARD = re.compile(r"^if __name__ == ['\"]__main__['\"]\s*:", re.MULTILINE)


# ------------------------------------------------------------------------ BUILD evaluation


def bazelignored(root):
  """Directories (relative to `root`) listed in .bazelignore."""
  path = os.path.join(root, ".bazelignore")
  if not os.path.exists(path):
    return set()
  with open(path) as f:
    return {line.strip().strip("/") for line in f if line.strip() and not line.startswith("#")}


def is_package(directory):
  return any(os.path.isfile(os.path.join(directory, n)) for n in ("BUILD", "BUILD.bazel"))


def _match(parts, pattern):
  """Whether path segments `parts` match glob pattern segments (`**`: zero or more)."""
  if not pattern:
    return not parts
  if pattern[0] == "**":
    return any(_match(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
  return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _match(
      parts[1:], pattern[1:])


def package_files(root, package):
  """Files of `package` (relative paths), as Bazel's glob sees them: no subpackages, no
  .bazelignore'd directories, symlinked directories not followed."""
  ignored = bazelignored(root)
  top = os.path.join(root, package)
  files = []
  for dirpath, dirnames, filenames in os.walk(top):
    rel_dir = os.path.relpath(dirpath, top)
    kept = []
    for d in dirnames:
      rel = os.path.normpath(os.path.join(rel_dir, d))
      from_root = os.path.normpath(os.path.join(package, rel))
      if from_root in ignored or is_package(os.path.join(dirpath, d)):
        continue
      kept.append(d)
    dirnames[:] = kept
    files += [os.path.normpath(os.path.join(rel_dir, n)) for n in filenames]
  return sorted(files)


class Target:
  """One rule call: its package, rule (or macro) name and attributes."""

  def __init__(self, package, kind, attrs):
    self.package, self.kind, self.attrs = package, kind, attrs
    self.name = attrs.get("name")

  def __repr__(self):
    return f"{self.kind}(//{self.package}:{self.name})"


def evaluate_build(root, package):
  """Evaluates `package`/BUILD under `root`; returns its targets in call order."""
  targets = []
  path = os.path.join(root, package, "BUILD")
  with open(path) as f:
    source = f.read()

  def rule(kind):
    def record(*args, **attrs):  # exports_files(["BUILD"]) has a positional argument.
      targets.append(Target(package, kind, dict(attrs, _args=args)))
    return record

  def glob(include, exclude=(), exclude_directories=1, allow_empty=True):
    del exclude_directories, allow_empty
    files = package_files(root, package)
    keep = lambda f, pats: any(_match(f.split("/"), p.split("/")) for p in pats)
    return [f for f in files if keep(f, include) and not keep(f, exclude)]

  namespace = {kind: rule(kind) for kind in NATIVE_RULES}
  namespace["glob"] = glob

  def load(label, *names, **aliases):
    del label
    for name in names:
      namespace[name] = rule(name)
    for alias, name in aliases.items():
      namespace[alias] = rule(name)

  namespace["load"] = load
  try:
    exec(compile(source, path, "exec"), namespace)  # pylint: disable=exec-used
  except NameError as e:
    raise AssertionError(
        f"{path} calls a rule this test does not model ({e}). Add it to NATIVE_RULES in "
        "tests/test_bazel_build.py, or load it from a .bzl file.") from e
  return targets


def all_targets(root):
  """Targets of every BUILD package under `root` (outside .bazelignore'd directories)."""
  ignored = bazelignored(root)
  packages = []
  for dirpath, dirnames, _ in os.walk(root):
    rel = os.path.normpath(os.path.relpath(dirpath, root))
    rel = "" if rel == "." else rel
    dirnames[:] = [d for d in dirnames
                   if os.path.normpath(os.path.join(rel, d)) not in ignored and d != ".git"]
    if os.path.isfile(os.path.join(dirpath, "BUILD")):
      packages.append(rel)
  return [t for p in sorted(packages) for t in evaluate_build(root, p)]


def resolve(label, package):
  """(package, name) of a label written in `package`."""
  if label.startswith(":"):
    return package, label[1:]
  if label.startswith("//"):
    pkg, _, name = label[2:].partition(":")
    return pkg, name or pkg.rsplit("/", 1)[-1]
  return package, label


def srcs_of(target):
  return [os.path.normpath(os.path.join(target.package, s)) for s in target.attrs.get("srcs", [])
          if not s.startswith(("//", ":"))]


def transitive_srcs(target, by_label):
  """Source files of `target` and of every target it depends on."""
  seen, stack, files = set(), [target], set()
  while stack:
    t = stack.pop()
    if (t.package, t.name) in seen:
      continue
    seen.add((t.package, t.name))
    files.update(srcs_of(t))
    for dep in t.attrs.get("deps", []):
      key = resolve(dep, t.package)
      assert key in by_label, f"{t} depends on {dep}, which no BUILD file defines."
      stack.append(by_label[key])
  return files


# ------------------------------------------------------------------------ sync checks


def entry_point_modules(root):
  """Dotted names of modules in the libraries with an `if __name__ == "__main__":` block."""
  modules = set()
  for lib in LIBRARIES:
    for rel in package_files(root, lib):
      if rel.endswith(".py"):
        with open(os.path.join(root, lib, rel), encoding="utf-8") as f:
          if MAIN_GUARD.search(f.read()):
            modules.add(f"{lib}.{rel[:-3].replace('/', '.')}")
  return modules


def missing_test_targets(root, targets):
  """tests/test_*.py files without a pytest_test target for them."""
  on_disk = {f"tests/{f}" for f in os.listdir(os.path.join(root, "tests"))
             if f.startswith("test_") and f.endswith(".py")}
  covered = {os.path.normpath(os.path.join(t.package, t.attrs["src"]))
             for t in targets if t.kind == "pytest_test"}
  return sorted(on_disk - covered)


def missing_binaries(root, targets):
  """Entry-point modules (found on disk or required) without a py_module_binary."""
  wanted = entry_point_modules(root) | set(REQUIRED_BINARIES.values())
  have = {t.attrs.get("module") for t in targets if t.kind == "py_module_binary"}
  return sorted(wanted - have)


@pytest.fixture(scope="module", name="targets")
def fixture_targets():
  return all_targets(SOURCE_ROOT)


def test_every_test_module_has_a_pytest_target(targets):
  missing = missing_test_targets(SOURCE_ROOT, targets)
  assert not missing, (f"No pytest_test target runs {missing}. Test modules get one from the "
                       "glob() in tests/BUILD; check it was not narrowed or excluded.")
  tests = [t for t in targets if t.kind == "pytest_test"]
  for t in tests:
    assert t.package == "tests", f"{t} is outside tests/BUILD."
    assert t.name == t.attrs["src"][:-3], f"{t} should be named after its file {t.attrs['src']}."
    assert os.path.isfile(os.path.join(SOURCE_ROOT, "tests", t.attrs["src"])), (
        f"{t} runs tests/{t.attrs['src']}, which does not exist.")


def test_test_support_files_are_a_dependency_of_every_test(targets):
  by_label = {(t.package, t.name): t for t in targets}
  support = {f"tests/{f}" for f in os.listdir(os.path.join(SOURCE_ROOT, "tests"))
             if f.endswith(".py") and not f.startswith("test_")}
  assert "tests/conftest.py" in support
  for t in (t for t in targets if t.kind == "pytest_test"):
    files = transitive_srcs(t, by_label)
    assert support <= files, f"{t} lacks the test helpers {sorted(support - files)}."
    assert {"tfreid/__init__.py", "experiments/__init__.py",
            "data_pipelines/__init__.py"} <= files, f"{t} lacks a library."


def test_every_entry_point_has_a_binary(targets):
  missing = missing_binaries(SOURCE_ROOT, targets)
  assert not missing, (f"No py_module_binary in BUILD runs {missing}. Add one per entry point "
                       "(`py_module_binary(name=..., module=..., deps=[...])`).")
  binaries = {t.name: t.attrs["module"] for t in targets
              if t.kind == "py_module_binary" and t.package == ""}
  assert {k: binaries.get(k) for k in REQUIRED_BINARIES} == REQUIRED_BINARIES


def test_every_binary_module_is_in_its_dependencies(targets):
  by_label = {(t.package, t.name): t for t in targets}
  for t in (t for t in targets if t.kind == "py_module_binary"):
    module_file = t.attrs["module"].replace(".", "/") + ".py"
    files = transitive_srcs(t, by_label)
    assert module_file in files, (
        f"{t} runs {t.attrs['module']}, but {module_file} is not in the srcs of its deps "
        f"{t.attrs['deps']} (or does not exist yet).")


@pytest.mark.parametrize("library", LIBRARIES)
def test_libraries_hold_every_file_of_their_package(targets, library):
  lib = [t for t in targets if t.kind == "py_library" and t.package == "" and t.name == library]
  assert len(lib) == 1, f"BUILD must define exactly one py_library named {library}."
  on_disk = {f"{library}/{f}" for f in package_files(SOURCE_ROOT, library) if f.endswith(".py")}
  assert f"{library}/__init__.py" in on_disk
  assert set(srcs_of(lib[0])) == on_disk
  assert lib[0].attrs.get("imports") == ["."]


def test_no_target_reaches_into_venv_runs_or_bazel_outputs(targets):
  ignored = bazelignored(SOURCE_ROOT)
  assert {".venv", "runs"} <= ignored, ".bazelignore must list .venv and runs."
  for t in targets:
    for f in srcs_of(t) + [os.path.join(t.package, d) for d in t.attrs.get("data", [])
                           if not d.startswith(("//", ":"))]:
      assert not f.startswith((".venv/", "runs/", "bazel-")), f"{t} includes {f}."


# ------------------------------------------------------------------------ the checker itself


def _write(root, rel, text=""):
  path = os.path.join(root, rel)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)


def test_checker_reports_test_modules_and_entry_points_without_targets(tmp_path):
  root = str(tmp_path)
  _write(root, ".bazelignore", ".venv\n")
  for rel in ("tests/conftest.py", "tests/test_a.py", "tests/test_b.py",
              "tfreid/__init__.py", "experiments/__init__.py", "data_pipelines/__init__.py",
              ".venv/lib/pkg/mod.py"):
    _write(root, rel)
  _write(root, ".venv/lib/pkg/BUILD", "this is not evaluated")
  _write(root, "tfreid/sub/tool.py", 'if __name__ == "__main__":\n  main()\n')
  _write(root, "data_pipelines/convert.py", 'if __name__ == "__main__":\n  main()\n')
  _write(root, "BUILD", 'load("//tools/bazel:defs.bzl", "py_module_binary")\n'
         'py_library(name = "tfreid", srcs = glob(["**/*.py"]))\n'
         'py_module_binary(name = "convert", module = "data_pipelines.convert", deps = [])\n')
  _write(root, "tests/BUILD", 'load("//tools/bazel:defs.bzl", "pytest_test")\n'
         '[pytest_test(name = s[:-3], src = s) for s in glob(["test_*.py"], '
         'exclude = ["test_b.py"])]\n')
  targets = all_targets(root)
  assert missing_test_targets(root, targets) == ["tests/test_b.py"]
  assert missing_binaries(root, targets) == sorted(
      {"tfreid.sub.tool"} | (set(REQUIRED_BINARIES.values()) - {"data_pipelines.convert"}))
  # glob stops at the tests/ subpackage and at the .bazelignore'd .venv.
  assert srcs_of(targets[0]) == ["data_pipelines/__init__.py", "data_pipelines/convert.py",
                                 "experiments/__init__.py", "tfreid/__init__.py",
                                 "tfreid/sub/tool.py"]


# ------------------------------------------------------------------------ runner and imports


def _load_runner():
  path = os.path.join(RUN_ROOT, "tools", "bazel", "pytest_main.py")
  spec = importlib.util.spec_from_file_location("pytest_main_under_test", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_runner_builds_pytest_command_line_from_bazel_environment():
  runner = _load_runner()
  assert runner.workspace_root() == RUN_ROOT
  args = runner.pytest_args("tests/test_bazel_build.py", ["-x"],
                            {"XML_OUTPUT_FILE": "/out/test.xml", "TESTBRIDGE_TEST_ONLY": "sync"})
  assert args == [os.path.join(RUN_ROOT, "tests", "test_bazel_build.py"), f"--rootdir={RUN_ROOT}",
                  "-p", "no:cacheprovider", "--junitxml=/out/test.xml", "-k", "sync", "-x"]
  assert runner.pytest_args("tests/test_bazel_build.py", [], {})[-1] == "no:cacheprovider"
  with pytest.raises(SystemExit, match="tests/test_nothing.py.*relative to the workspace root"):
    runner.pytest_args("tests/test_nothing.py", [], {})


def test_tests_import_the_tree_they_run_from():
  """Under Bazel the libraries come from the runfiles tree (declared deps), not from the
  editable install of the source tree; under plain pytest from the source tree."""
  import data_pipelines  # pylint: disable=import-outside-toplevel
  import experiments  # pylint: disable=import-outside-toplevel
  import tfreid  # pylint: disable=import-outside-toplevel
  for module in (tfreid, experiments, data_pipelines):
    assert os.path.dirname(os.path.dirname(os.path.abspath(module.__file__))) == RUN_ROOT
  assert importlib.util.find_spec("tensorflow") is not None, (
      f"{sys.executable} cannot import tensorflow: not the project's environment.")
