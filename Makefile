# One command for the main job, one for the tests; both create .venv on first use.
VENV ?= .venv
PYTHON ?= python3
# Stage commands in dvc.yaml call `python`, and DVC's queue workers call `dvc`:
# both must be the venv's.
export PATH := $(abspath $(VENV))/bin:$(PATH)
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: install system-deps repro exps serve test test-fast lint format plots-template

# Debian packages whose sample photos the OOD set uses (src/abcd/oodset/photos.py: DEB_PACKAGES). Optional:
# ood_data reads the same files from the mirror (data/ood_sources.yaml) when it exists; `make system-deps`
# is the other route, for a Debian machine without the mirror (docs/data.md: The OOD set).
DEB_PACKAGES := opencv-doc lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 mate-backgrounds lxqt-themes libvips-doc imagemagick-6-doc
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

install: $(VENV)/.installed

# One venv for the pipeline and the tests: requirements/dev.txt pins the dev extra's closure, which holds
# train's (and serve's); the project is then installed editable on top. A serve-only install needs no
# make: docs/deploy.md.
$(VENV)/.installed: requirements/dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -r requirements/dev.txt
	$(VENV)/bin/pip install --no-deps --no-build-isolation -e .
	touch $@

system-deps:  ## optional, the OOD photos' apt route: the packages above unless installed (apt-get; root or sudo)
	@[ "$$(dpkg-query -W -f='$${Status}\n' $(DEB_PACKAGES) 2>/dev/null | grep -c 'install ok installed')" = \
		"$(words $(DEB_PACKAGES))" ] || { $(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive \
		$(SUDO) apt-get install -y --no-install-recommends $(DEB_PACKAGES); }

repro: install  ## set up, then run the whole pipeline on the default data (installs no system package)
	dvc repro

# The deciding numbers and lr always; other params and metrics only where experiments differ; no
# dependency-hash columns. DVC has no setting for the default view (docs/experiments.md).
DECIDING := ^(test\.f1_macro|test\.log_loss|unknown\.ood_photos_rejected|unknown\.known_rejected|lr)$$
exps: install  ## the readable `dvc exp show`: make exps [ARGS="-A --sort-by test.f1_macro"]
	dvc exp show --only-changed --keep '$(DECIDING)' --drop '^(src|data|models|plots|reports)/' $(ARGS)

serve: install  ## the int8 model (dvc repro makes it) behind HTTP: http://127.0.0.1:8000/; MODEL=models/model.onnx for fp32
	python -m abcd.serving.app $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT)) $(if $(MODEL),--model $(MODEL))

# Two loops. `make test` (what CI runs) is lint, then every test with each property test's full example count:
# at most 20 minutes on 2 cores without bf16. `make test-fast` is lint, then every test not marked slow with
# Hypothesis's "fast" profile (tests/conftest.py): about a minute on 2 cores, no DVC pipeline run, no Debian
# package, no pretrained backbone but Lite0. Slow tests: the pipeline end to end (one shared `dvc repro` in a
# temporary copy of the repo), the OOD set from Debian's photos, the larger backbones, Chromium, dvc.lock.
# On a CPU with bf16, `ABCD_TEST_PRECISION=fp32 make test` runs the pipeline tests' copies in fp32 (their
# runtime.precision; tests/pipeline_utils.py), as `auto` does on a CPU without bf16: CI's timing, measured here.
test: install  ## lint, then the whole test suite (unit + end-to-end; installs no system package)
	ruff check .
	ruff format --check .
	pytest

test-fast: lint  ## the quick local loop: lint, then every test not marked slow (no DVC pipeline runs)
	pytest -m "not slow" --hypothesis-profile=fast

lint: install
	ruff check .
	ruff format --check .

format: install
	ruff format .
	ruff check --fix .

plots-template:  ## re-inline the Vega scripts into .dvc/plots_offline.html (needs npm)
	rm -rf .plots-template && mkdir .plots-template
	cd .plots-template && npm pack --silent vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2 && \
		for f in *.tgz; do tar xzf $$f --one-top-level; done
	$(VENV)/bin/python tools/make_plots_template.py .plots-template
	rm -rf .plots-template
