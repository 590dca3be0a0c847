# ambit's build, test and lab entry points. `make help` lists the targets.
#
# The logic lives in hack/*.sh; this file names the steps and their order. Every Go step runs
# over all modules of the workspace (go.work) through hack/packages.sh, so a module with no
# packages yet is skipped instead of breaking the command.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

# protoc release the generated code is made with (Debian 12's protobuf-compiler). The plugins
# are pinned by the tool directives in proto/go.mod.
export PROTOC_VERSION := 3.21.12

# Native Go fuzz targets that `make test` runs, one per line as
#   FUZZ += <package dir>:<FuzzFunction>:<count>x
# e.g. FUZZ += ./mesh/identity:FuzzParseCSR:300000x
# Counts, not durations: Go 1.26's fuzzing coordinator can fail a duration-bounded run with a
# bare "context deadline exceeded" as the time runs out (golang/go#75804, fixed in Go 1.27);
# a count has no deadline to race. Each count is about ten seconds of this 2-core machine.
# FUZZTIME applies to a target listed without one.
# List only targets that exist: `make fuzz` fails on a missing one rather than pass silently.
FUZZ :=
FUZZ += ./mesh/identity:FuzzParseCSR:300000x
FUZZ += ./mesh/hbone:FuzzConnectRequest:200000x
FUZZ += ./mesh/hbone:FuzzH3Request:200000x
FUZZ += ./mesh/hbone:FuzzH3Control:200000x
FUZZ += ./mesh/hbone:FuzzForwarded:70000x
FUZZ += ./mesh/hbone:FuzzTraceparent:100000x
FUZZ += ./mesh/hbone:FuzzBaggage:50000x
FUZZ += ./ztunnel/internal/localconfig:FuzzParse:100000x
FUZZ += ./waypoint/internal/proxy:FuzzCheckHead:100000x
FUZZ += ./waypoint/internal/proxy:FuzzSniff:100000x
FUZZ += ./waypoint/internal/proxy:FuzzTraceContext:40000x
FUZZ += ./waypoint/internal/proxy:FuzzPeekSNI:1500x
FUZZ += ./waypoint/internal/proxy:FuzzHeadWriters:50000x

# The controller's targets, whose tests link client-go and the Kubernetes API types: `go test
# -fuzz` compiles every package of the test binary once more, instrumented, which is 4.8 of a
# cold `make test`'s minutes for these three (2026-12-05), so `make test` leaves them to
# `make fuzz-k8s`; their seeds run in every `make test` as ordinary tests.
# Each execution of FuzzFolderDecode decodes through the Kubernetes scheme and is slow under
# the fuzzer.
FUZZ_K8S :=
FUZZ_K8S += ./controller/internal/source:FuzzFolderDecode:50x
FUZZ_K8S += ./controller/internal/configdir:FuzzSetLabel:10000x
FUZZ_K8S += ./controller/internal/cli:FuzzConfigDump:5000x

FUZZTIME ?= 20000x

# Per-binary timeout of go test; the whole of `make test` must stay well under CI's 90 minutes.
# The lab's package is the longest (about 8 min with the race detector: the chaos, load and
# soak tests), and it may first wait for the test clusters to finish (mesh/e2elock).
TESTTIMEOUT ?= 20m

.PHONY: kube-apiserver kube-node images bench-hbone help setup build proto proto-check lint unit compat fuzz fuzz-k8s test demo bench bench-quick e2e-k8s bench-controller clean soak chaos

help: ## list the targets
	@echo "usage: make <target>"
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: ## install the system tools (protoc, iptables, iproute2, haproxy, nginx, stunnel, etcd, containerd) if missing; needs root
	@hack/setup.sh

build: ## compile every package of every module; commands go to bin/, static (CGO_ENABLED=0) as in the images
	@pkgs=$$(hack/packages.sh --build); \
	if [[ -z $$pkgs ]]; then echo "build: no Go packages yet"; exit 0; fi; \
	. hack/goflags.sh; static_go build $$pkgs; \
	mains=$$(hack/packages.sh --main); \
	if [[ -z $$mains ]]; then echo "build: packages compile; no commands (cmd/) yet"; exit 0; fi; \
	mkdir -p bin; static_go build -o bin/ $$mains; \
	echo "build: $$(ls bin | tr '\n' ' ')in bin/"

proto: ## regenerate the Go code of the .proto files under proto/
	@hack/protogen.sh

proto-check: ## regenerate and fail if the generated Go differs from what is committed
	@hack/proto-check.sh

# controller-gen, pinned by the tool directive in tools/codegen/go.mod, built once into .cache/bin.
CONTROLLER_GEN := .cache/bin/controller-gen

$(CONTROLLER_GEN): tools/codegen/go.mod tools/codegen/go.sum
	@mkdir -p $(@D)
	. hack/goflags.sh && cd tools/codegen && GOWORK=off static_go build -o ../../$@ sigs.k8s.io/controller-tools/cmd/controller-gen

# The controller's built-in waypoint template is a copy of deploy/waypoint/waypoint.yaml, the
# one source (a module cannot go:embed a file outside its directory).
WAYPOINT_TEMPLATE := controller/internal/waypointdeploy/waypoint.yaml
# `ambitctl install` applies the manifests of deploy/ it embeds: a copy of their YAML files.
MANIFESTS := controller/internal/manifests/deploy
MANIFEST_SOURCES := deploy/namespace.yaml deploy/crds deploy/rbac deploy/controller deploy/ztunnel deploy/node-agent

generate: $(CONTROLLER_GEN) ## regenerate the CRD types' deepcopy code and the CRDs in deploy/crds (controller-gen); copy the waypoint template and the install manifests into the controller
	cd controller && ../$(CONTROLLER_GEN) object paths=./apis/... crd paths=./apis/... output:crd:artifacts:config=../deploy/crds
	cp deploy/waypoint/waypoint.yaml $(WAYPOINT_TEMPLATE)
	rm -rf $(MANIFESTS) && mkdir -p $(MANIFESTS) && cp -r $(MANIFEST_SOURCES) $(MANIFESTS)/ && find $(MANIFESTS) -type f ! -name '*.yaml' -delete

generate-check: ## regenerate and fail if controller/apis, deploy/crds, the built-in waypoint template or ambitctl's manifests differ from what is committed
	@$(MAKE) generate
	@gen=(controller/apis deploy/crds $(WAYPOINT_TEMPLATE) $(MANIFESTS)); fail=0; \
	if ! git diff --quiet -- "$${gen[@]}"; then \
		echo "generate-check: generated code differs from what is committed:" >&2; \
		git --no-pager diff --stat -- "$${gen[@]}" >&2; fail=1; \
	fi; \
	untracked=$$(git ls-files --others --exclude-standard -- "$${gen[@]}"); \
	if [[ -n $$untracked ]]; then \
		echo "generate-check: files not in git:" >&2; echo "$$untracked" >&2; fail=1; \
	fi; \
	if [[ $$fail -ne 0 ]]; then \
		echo "generate-check: run 'make generate' and commit the API types with their generated code and CRDs, and the waypoint template's copy" >&2; exit 1; \
	fi; \
	echo "generate-check: generated code and CRDs are up to date"

kube-apiserver: ## build kube-apiserver from the k8s.io/kubernetes module into .cache/bin, once (for the e2e tests)
	@hack/kube-build.sh kube-apiserver

# The node's Kubernetes commands, from the same pinned module (tools/kube/go.mod), for the tests
# on a real kubelet.
KUBE_NODE := kubelet kube-controller-manager kube-scheduler kubectl kube-proxy

kube-node: ## build kube-apiserver and the node's Kubernetes commands (kubelet, controller-manager, scheduler, kubectl, kube-proxy) into .cache/bin, once, in one go build
	@hack/kube-build.sh kube-apiserver $(KUBE_NODE)

# The container images (OCI tarballs in .cache/images, listed with their digests in
# .cache/images/images.txt); the list of parts is in hack/images.sh. VERSION names the tag
# (default: git describe --always --dirty).
images: ## build the images of controller, ztunnel, waypoint, testapp and pause as OCI tarballs into .cache/images (no Docker, no registry)
	@hack/images.sh $(if $(VERSION),--version $(VERSION))

lint: ## gofmt, go vet and staticcheck over every module
	@hack/lint.sh

unit: ## go test -race over every package of every module
	@pkgs=$$(hack/packages.sh); \
	if [[ -z $$pkgs ]]; then echo "unit: no Go packages yet"; exit 0; fi; \
	go test -race -count=1 -timeout $(TESTTIMEOUT) $$pkgs

compat: ## HBONE wire compatibility with Istio's Go implementation (compat/istio, its own module outside go.work)
	@cd compat/istio && GOWORK=off go test -race -count=1 -timeout $(TESTTIMEOUT) ./...

fuzz: ## run each FUZZ target for its count of executions (FUZZTIME for one without)
	@hack/fuzz.sh -t $(FUZZTIME) $(FUZZ)

fuzz-k8s: ## the controller's fuzz targets (FUZZ_K8S), which make test leaves out: their instrumented build compiles client-go once more (about 5 min cold)
	@hack/fuzz.sh -t $(FUZZTIME) $(FUZZ_K8S)

test: setup kube-node images ## everything CI checks: proto-check, generate-check, lint, unit (with the e2e tests), compat, fuzz
	@$(MAKE) proto-check
	@$(MAKE) generate-check
	@$(MAKE) lint
	@$(MAKE) unit
	@$(MAKE) compat
	@$(MAKE) fuzz

SOAK ?= 30m

soak: setup ## the long soak: TestLabSoak for 30 min (SOAK=1h for longer) — mixed HTTP/TCP traffic at a fixed rate through both ztunnels and a waypoint; every call succeeds, RSS, goroutines and files stay flat after the warm-up (root; make test runs 2 min)
	@cd controller && AMBIT_SOAK=$(SOAK) go test -count=1 -timeout 3h -run '^TestLabSoak$$' -v ./lab/

chaos: setup ## the lab's chaos and load tests three times over: ztunnel kill -9, controller away past half a certificate's life, a lossy and slow bridge (HTTP/2 and HTTP/3), root rotation, 19,000 tunnels, 15,000 waypoint connections (root; make test runs each once)
	@cd controller && go test -count=3 -timeout 2h -v -run '^TestLab(ZtunnelKill9|ControllerAwayPastHalfLife|LossyBridge|LossyH3|RootRotation|Ztunnel20kTunnels|Waypoint15kConnections)$$' ./lab/

demo: setup build ## the mesh on the local lab, step by step: plaintext, enrol, mTLS with identity, L4 deny and allow, waypoint, 90/10 canary, L7 deny (root; about 1 min warm, 6 cold)
	@hack/demo.sh

bench-hbone: ## HBONE micro-benchmarks: round trip and throughput of direct, raw mTLS and HBONE paths, with ratios
	@hack/bench-hbone.sh

bench: setup ## data plane on the lab, one run: direct, ambit-l4, ambit-l4-h3, ambit-l7 and the peers haproxy-mtls, nginx-mtls, stunnel-mtls in 3 interleaved rounds, the last with the capacity and idle-tunnel sweeps; bench/results and docs/benchmarks.md (root, ~13 min)
	@hack/bench.sh

bench-quick: setup ## the same in under three minutes (shorter runs and sweeps, 1 and 16 connections); bench/results/quick only (root)
	@hack/bench.sh --quick

# Packages of the end-to-end tests against a real kube-apiserver and etcd (`make test` runs
# them too, as part of unit). Only directories that exist are tested.
E2E_K8S := ./controller/internal/kubetest ./controller/e2e

e2e-k8s: kube-apiserver ## end-to-end tests against a real kube-apiserver and etcd (controller/internal/kubetest, controller/e2e)
	@pkgs=(); for d in $(E2E_K8S); do if [[ -d $$d ]]; then pkgs+=("$$d/..."); fi; done; \
	if [[ $${#pkgs[@]} -eq 0 ]]; then echo "e2e-k8s: no end-to-end test packages" >&2; exit 1; fi; \
	go test -race -count=1 -timeout $(TESTTIMEOUT) "$${pkgs[@]}"

BENCH_CONTROLLER_PODS ?= 10000 50000 100000
bench-controller: ## controller push at scale: 10,000, 50,000 and 100,000 pods (a Service per 10), 100 xDS clients on loopback; a JSON line each, also in bench/results/controller.jsonl, plotted in controller.png and controller-rss.png (~3 min, 10 GB)
	@mkdir -p bin bench/results; . hack/goflags.sh; static_go build -o bin/bench-controller ./controller/internal/xds/pushbench; \
	static_go build -o bin/bench ./bench/cmd/bench; \
	: > bench/results/controller.jsonl.new; \
	for p in $(BENCH_CONTROLLER_PODS); do \
		bin/bench-controller -pods $$p -services $$((p / 10)) -clients 100 -changes 200 | tail -1 | tee -a bench/results/controller.jsonl.new || exit 1; \
	done; mv bench/results/controller.jsonl.new bench/results/controller.jsonl; \
	bin/bench plot-controller --in bench/results/controller.jsonl

clean: ## remove bin/ and .cache/
	rm -rf bin .cache
