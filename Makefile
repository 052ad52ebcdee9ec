# Two commands do everything on a fresh machine: `make test` and `make demo` (README.md).
# The virtualenv is (re)built whenever a requirements file or pyproject.toml changes.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MEDIAPIPE := mediapipe==0.10.18
# What the tests and the demo run for real: an MQTT broker, a headless browser, systemd-analyze.
DEBIAN_PACKAGES := mosquitto mosquitto-clients chromium systemd
# What only `make bench` needs: the broker for the daemon benchmarks and wrk, the HTTP load generator.
BENCH_DEBIAN_PACKAGES := mosquitto wrk

.PHONY: test demo lint bench bench-system venv system clean

venv: $(STAMP)

$(STAMP): requirements/device.txt requirements/scale.txt requirements/dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/dev.txt
	# mediapipe's declared dependencies would install opencv-contrib-python next to
	# opencv-python-headless (two builds in one cv2 folder) and jax; README explains.
	$(PY) -m pip install --quiet --no-deps $(MEDIAPIPE)
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -c "import cv2, mediapipe, numpy; print('venv ready: numpy', numpy.__version__, 'opencv', cv2.__version__, 'mediapipe', mediapipe.__version__)"
	touch $(STAMP)

system:
	scripts/ensure-debian-packages $(DEBIAN_PACKAGES)

test: system $(STAMP)
	$(PY) -m ruff check device trainer provisioning tests benchmarks scripts
	$(PY) -m pytest

demo: system $(STAMP)
	$(PY) scripts/demo.py

lint: $(STAMP)
	$(PY) -m ruff check device trainer provisioning tests benchmarks scripts

bench-system:
	scripts/ensure-debian-packages $(BENCH_DEBIAN_PACKAGES)

# One table of every benchmark (~10 min on 2 cores); e.g. BENCH_ARGS="--soak-seconds 600 --out bench.md".
bench: bench-system $(STAMP)
	$(PY) -m benchmarks table $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .demo
