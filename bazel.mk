# Bazel targets (included by the Makefile): `make bazel-install bazel-test`.
#
# bazel-install  installs Debian's bazel-bootstrap (Bazel 4.2) with apt-get, unless a `bazel`
#                is already on PATH. Needs root or sudo.
# bazel-test     creates .venv (`make install`), then runs `bazel test //...` with the venv's
#                interpreter as the Python toolchain (tools/bazel/python_venv.bzl); works offline.
# bazel-build    builds every target (libraries, the train/evaluate/export/convert/synthetic
#                binaries in bazel-bin/, the tests) without running the tests.
#
# Extra Bazel options: `make bazel-test BAZEL_FLAGS="--local_test_jobs=1"`.

BAZEL ?= bazel
BAZEL_FLAGS ?=
# apt-get needs root: use sudo when not running as root.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
# The interpreter Bazel runs targets with: this Makefile's venv (VENV), by absolute path.
BAZEL_PYTHON_FLAGS = --repo_env=TFREID_PYTHON=$(abspath $(PY))

.PHONY: bazel-install bazel-build bazel-test

bazel-install:
	@if command -v $(BAZEL) >/dev/null 2>&1; then \
	  echo "bazel-install: $(BAZEL) is $$(command -v $(BAZEL)), nothing to do."; \
	else \
	  $(SUDO) apt-get update && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
	    bazel-bootstrap; \
	fi

bazel-build: install bazel-install
	$(BAZEL) build $(BAZEL_PYTHON_FLAGS) $(BAZEL_FLAGS) //...

bazel-test: install bazel-install
	$(BAZEL) test $(BAZEL_PYTHON_FLAGS) $(BAZEL_FLAGS) //...
