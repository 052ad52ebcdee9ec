# Two commands do everything on a fresh machine: `make test` and `make demo` (README.md).
# The virtualenv is (re)built whenever a requirements file or pyproject.toml changes.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MEDIAPIPE := mediapipe==0.10.18
# The seed (StreamPoseML) from PyPI, in a virtualenv of its own: it pins its own numpy, pandas, scikit-learn.
SEED_VENV := .cache/seed-venv
SEED_STAMP := $(SEED_VENV)/.installed
SEED_PACKAGE := stream-pose-ml==0.3.1
# What the tests and the demo run for real: an MQTT broker, a headless browser, systemd-analyze.
DEBIAN_PACKAGES := mosquitto mosquitto-clients chromium systemd
# What only `make bench` needs: the broker for the daemon benchmarks and wrk, the HTTP load generator.
BENCH_DEBIAN_PACKAGES := mosquitto wrk

.PHONY: test demo lint bench bench-seed bench-system pi-check venv system clean

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

# One table of every benchmark (~15 min on 2 cores); e.g. BENCH_ARGS="--soak-seconds 600 --out bench.md".
bench: bench-system $(STAMP)
	$(PY) -m benchmarks table $(BENCH_ARGS)

$(SEED_STAMP):
	test -x $(SEED_VENV)/bin/python || $(PYTHON) -m venv $(SEED_VENV)
	$(SEED_VENV)/bin/python -m pip install --quiet $(SEED_PACKAGE)
	$(SEED_VENV)/bin/python -c "import numpy, pandas, stream_pose_ml.jobs.build_and_format_dataset_job; print('seed venv ready: numpy', numpy.__version__, 'pandas', pandas.__version__)"
	touch $(SEED_STAMP)

# The seed's own code timed beside ours (~3 min, ~2 GB of its files in /tmp); `make bench` then includes it.
bench-seed: $(STAMP) $(SEED_STAMP)
	$(PY) -m benchmarks seed

# The kiosk installed and run on emulated Raspberry Pi OS 64-bit (Debian 12 arm64, qemu-user), as root:
# ~20 min from scratch, ~12 with the cache in .cache/pi-root; e.g. PI_CHECK_ARGS="--fresh" (README).
pi-check: $(STAMP)
	$(PY) scripts/pi_check.py $(PI_CHECK_ARGS)

clean:
	rm -rf $(VENV) $(SEED_VENV) .pytest_cache .hypothesis .demo
