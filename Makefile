# The two quickstart commands: `make demo` and `make test`. Both create .venv when missing.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
CSRC := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' 2>/dev/null)
DEMO_OUT ?= outputs/demo

.PHONY: demo demo-joint demo-instance test install clean gpu-check bench

$(VPY):
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip setuptools wheel

# torch is installed first and pinned to 2.13.0 (the CPU build on this disk); the package itself is
# installed without build isolation so its extension compiles against that torch.
$(VENV)/.installed: $(VPY) pyproject.toml setup.py $(CSRC)
	$(VPY) -m pip install -q "torch==2.13.0"
	$(VPY) -m pip install -q --no-build-isolation -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# setup_browser.sh installs Debian's chromium for the viewer test when missing (the test skips without it).
test: $(VENV)/.installed
	-sh tools/setup_browser.sh
	OMP_WAIT_POLICY=PASSIVE $(VPY) -m pytest -q tests

demo: $(VENV)/.installed
	$(VPY) tools/demo.py --out $(DEMO_OUT)

# Joint training on the demo's indoor and outdoor data vs each alone, at equal steps (about 4 min).
demo-joint: $(VENV)/.installed
	$(VPY) tools/demo_joint.py --out $(DEMO_OUT)

# The demo's instance stage alone (needs the Volt run of `make demo`).
demo-instance: $(VENV)/.installed
	$(VPY) tools/demo_instance.py --out $(DEMO_OUT)

bench: $(VENV)/.installed
	$(VPY) tools/bench.py ops

gpu-check:
	bash tools/gpu_check.sh

clean:
	rm -rf build *.egg-info volt/_C*.so $(VENV) outputs
