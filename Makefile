# Two commands: `make demo` (set up and run a demo sweep) and `make test`;
# `make figures` regenerates reports/invokeai_img2img/ (the InvokeAI img2img doc's figures) and
# reports/img2img_tutorial/ (the figures of Chris McCormick's "How img2img Diffusion Works"); MODEL_ARGS=... from
# your model;
# `make toy-train` retrains the shipped toy model (85 minutes on 2 CPU cores), `make toy-eval` measures it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel; a torch already in the venv (e.g. a CUDA build) is kept as it is.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test figures toy-train toy-eval

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --disable-pip-version-check -q "$(TORCH_SPEC)"
	$(PY) -m pip install --disable-pip-version-check -q -e ".[test]"
	touch $@

demo: install
	$(VENV)/bin/sweeplab -m experiment=demo
	@echo
	@echo "Results: MLflow store sqlite:///$(CURDIR)/mlflow.db, artifacts in $(CURDIR)/mlartifacts/demo"
	@echo "Browse them:  $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db"
	@echo "then open http://127.0.0.1:5000 and the experiment 'demo'."

# MODEL_ARGS="model.path=/models/v1-5 device=cuda": sweep overrides; the same figure set from that model, written to
# reports/invokeai_img2img-<model>/ beside the toy's reports/invokeai_img2img/
figures: install
	$(VENV)/bin/sweeplab-report doc-figures --experiment invokeai_img2img --run-missing $(if $(MODEL_ARGS),-- $(MODEL_ARGS))
	$(VENV)/bin/sweeplab-report tutorial-figures --experiment img2img_tutorial --run-missing $(if $(MODEL_ARGS),-- $(MODEL_ARGS))

toy-train: install
	$(PY) -m sweeplab.toy.train --workdir .toy-train --resume

toy-eval: install
	$(PY) -m sweeplab.toy.evaluate --json reports/toy-model/evaluation.json --sheet reports/toy-model/samples.png

test: install
	$(PY) -m pytest -q -p no:cacheprovider
