"""Runs pytest on one test file; the main of every `pytest_test` target (tools/bazel/defs.bzl).

    pytest_main.py tests/test_losses.py [pytest arguments ...]

The file is given relative to the workspace root, as `$(rootpath ...)` writes it, and is
looked up in the runfiles tree this script lives in, so the working directory does not
matter. Under `bazel test` it also
  * writes the JUnit XML report Bazel asks for (XML_OUTPUT_FILE), so test cases show up in
    the test log and in tools reading test.xml;
  * turns `--test_filter=EXPR` (TESTBRIDGE_TEST_ONLY) into `pytest -k EXPR`;
  * points TMPDIR at Bazel's per-test TEST_TMPDIR, so pytest's tmp_path lives in the sandbox.
pytest finds conftest.py beside the test file and pyproject.toml at the workspace root.
"""

import os
import sys

import pytest


def workspace_root():
  """The directory of this workspace in the runfiles tree (or the source tree)."""
  return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pytest_args(test_file, extra, environ):
  """pytest's command line for `test_file` (workspace-relative) and the Bazel test env."""
  root = workspace_root()
  path = test_file if os.path.isabs(test_file) else os.path.join(root, test_file)
  if not os.path.isfile(path):
    raise SystemExit(
        f"pytest_main: test file {test_file!r} not found (looked at {path}). Expected a path "
        "relative to the workspace root such as tests/test_losses.py; a pytest_test target "
        "passes it as $(rootpath SRC).")
  args = [path, f"--rootdir={root}", "-p", "no:cacheprovider"]
  if environ.get("XML_OUTPUT_FILE"):
    args.append(f"--junitxml={environ['XML_OUTPUT_FILE']}")
  if environ.get("TESTBRIDGE_TEST_ONLY"):
    args += ["-k", environ["TESTBRIDGE_TEST_ONLY"]]
  return args + list(extra)


def main(argv):
  """Entry point: argv[1] is the test file, the rest goes to pytest."""
  if len(argv) < 2:
    raise SystemExit("usage: pytest_main.py TEST_FILE [pytest arguments ...]")
  if os.environ.get("TEST_TMPDIR"):
    os.environ["TMPDIR"] = os.environ["TEST_TMPDIR"]
  return pytest.main(pytest_args(argv[1], argv[2:], os.environ))


if __name__ == "__main__":
  sys.exit(main(sys.argv))
