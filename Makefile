# Two entry points for a fresh machine (see README):
#   make serve   set up, then serve the built-in tiny model on CPU (OpenAI API on :8000)
#   make test    set up, then run every test (what CI runs through .ci/run)
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch is pinned only here (the CPU wheel, installed from local disk on our machines); the package
# itself accepts any torch >= 2.4 so ROCm users keep their ROCm wheel.
TORCH  ?= torch==2.13.0
EXTRAS ?= triton,serve,perf,test

.PHONY: setup toolchains test test-fast serve generate clean

$(VENV)/.setup-done: pyproject.toml setup.py CMakeLists.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[$(EXTRAS)]"
	touch $@

setup: $(VENV)/.setup-done

# Compilers for the gfx942 (clang-19) and sm_90 (nvcc) compile checks; needs root + apt.
toolchains:
	bash scripts/install_rocm_toolchain.sh

# The whole suite twice: with the native extension (the CPU build), then with it disabled, so
# the torch paths stay complete on their own.
test: setup toolchains
	$(PY) -c "import amd_llama4.ops.native as n; assert n.available(), 'native extension not built'"
	$(PY) -m pytest -q -p no:cacheprovider tests
	AMD_LLAMA4_NO_NATIVE=1 $(PY) -m pytest -q -p no:cacheprovider tests

test-fast: setup
	$(PY) -m pytest -q -m "not slow" tests

serve: setup
	$(VENV)/bin/amd-llama4 serve --model tiny-scout --tensor-parallel-size 2 --host 127.0.0.1 --port 8000

generate: setup
	$(VENV)/bin/amd-llama4 generate --model tiny-scout --max-tokens 32 "Hello from MI300X"

clean:
	rm -rf build *.egg-info amd_llama4/_C*.so
