# Each target creates (or reuses) the virtual environment it needs.
PYTHON ?= $(shell command -v python3.12 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
# setuptools warns that an editable install maps tfds_builder/ into the package: expected.
PIP_QUIET := PYTHONWARNINGS=ignore::UserWarning
WORKDIR ?= workdir/demo
DATA_DIR ?= $(HOME)/tensorflow_datasets

# $(call make_venv,DIR,PIP_ARGS): a virtual environment in DIR with the project installed
# (editable) with PIP_ARGS, e.g. '.[test]' and any extra packages; a comma in PIP_ARGS is
# written $(comma), since call splits its arguments at commas.
comma := ,
define make_venv
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install -q --upgrade pip
	$(PIP_QUIET) $(1)/bin/python -m pip install -q -e $(2)
	touch $(1)/.installed
endef

.PHONY: demo test lint tfds-test torch-test onnx-test landmarks-test clean

# An install that no longer imports from this checkout (a later `pip install '.[extra]'`
# without -e copies the package into the environment, and edits here would no longer count)
# is noticed on every make and replaced by the editable one.
ifneq ($(wildcard $(PY)),)
ifneq ($(shell cd / && $(abspath $(PY)) -c 'import fgmask_jax, os; print(os.path.dirname(os.path.dirname(fgmask_jax.__file__)))' 2>/dev/null),$(CURDIR))
$(shell rm -f $(VENV)/.installed)
endif
endif

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 12), "fgmask_jax needs Python >= 3.12, got " + sys.version'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PIP_QUIET) $(PY) -m pip install -q -e '.[test]'
	touch $@

# Builds the synthetic data if missing, writes a preview of it beside the report, trains
# the multi-task ResNet (runlocal) and ends with its per-task test metrics.
demo: $(VENV)/.installed
	$(PY) -m fgmask_jax.build_data --dataset=synthetic_masked_faces --data_dir=$(DATA_DIR)
	mkdir -p $(WORKDIR)
	$(PY) -m fgmask_jax.preview --dataset=synthetic_masked_faces --data_dir=$(DATA_DIR) \
		--out=$(WORKDIR)/preview.png
	$(PY) -m fgmask_jax.main --config=configs/multitask.py:data=synthetic,runlocal \
		--config.data_dir=$(DATA_DIR) --workdir=$(WORKDIR)

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest -q

# TFDS's own builder harness needs TensorFlow: it runs in a second environment so
# that the main suite keeps proving nothing else does.
$(VENV)-tf/.installed: pyproject.toml
	$(call make_venv,$(VENV)-tf,'.[test]' tensorflow-cpu dill)

tfds-test: $(VENV)-tf/.installed
	$(VENV)-tf/bin/python -m pytest -q tfds_builder

# Parity with torchvision itself (pretrained weights in and out): PyTorch in a third
# environment, so that the main suite keeps proving nothing else needs it.
$(VENV)-torch/.installed: pyproject.toml
	$(call make_venv,$(VENV)-torch,'.[test$(comma)bench]')

torch-test: $(VENV)-torch/.installed
	$(VENV)-torch/bin/python -m pytest -q tests/test_pretrained.py

# ONNX export checked with onnxruntime; jax2onnx pins its own orbax, so a fourth environment.
$(VENV)-onnx/.installed: pyproject.toml
	$(call make_venv,$(VENV)-onnx,'.[test$(comma)onnx]')

onnx-test: $(VENV)-onnx/.installed
	$(VENV)-onnx/bin/python -m pytest -q tests/test_export.py

# dlib's face detector and 68 landmarks (masks.apply --pts=detect) in a fifth environment, so
# that the main suite keeps proving the message for a missing dlib.
$(VENV)-landmarks/.installed: pyproject.toml
	$(call make_venv,$(VENV)-landmarks,'.[test$(comma)landmarks]')

landmarks-test: $(VENV)-landmarks/.installed
	$(VENV)-landmarks/bin/python -m pytest -q tests/test_landmarks.py tests/test_masks.py

clean:
	rm -rf $(VENV) $(VENV)-tf $(VENV)-torch $(VENV)-onnx $(VENV)-landmarks build *.egg-info
