# nvdimm-backend: build, test, lint, benchmarks and the demo.
# Every target works on a fresh Debian 12 machine as root with Go installed.

GO      ?= go
BIN     := bin/nvdimm-backend
PKGS    := ./...
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: all build static test deps unit integration lint bench bench-flush bench-guest demo clean

all: build

# The binary is static (no cgo): the same file runs on the host and,
# copied in, inside the test guests.
build:
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/nvdimm-backend

# A stripped static binary, for copying into guests.
static:
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS) -s -w' -o bin/nvdimm-backend-static ./cmd/nvdimm-backend

# Unit tests (including every fuzz target's seed corpus), then the
# integration suite when QEMU can run here. As root on Debian, QEMU and the
# guest userland are installed first, so the unit tests that drive a real
# (paused) QEMU run too instead of skipping.
test: deps unit
	@./integration/qemu/maybe-run

# Install what the tests and the demo need from Debian's archive, when
# running as root and something is missing; otherwise say why not.
deps:
	@if ./integration/qemu/install.sh --check >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing QEMU and the guest userland"; ./integration/qemu/install.sh || echo "install failed: tests that need QEMU will skip"; \
	else echo "not root: tests that need QEMU skip where it is missing"; fi

unit:
	$(GO) test -count=1 $(PKGS)

integration:
	@NVDIMM_INTEGRATION=require ./integration/qemu/maybe-run

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) tool staticcheck $(PKGS)
	$(GO) tool checklocks $(PKGS)
	$(GO) vet -tags integration ./integration/...
	$(GO) tool staticcheck -tags integration ./integration/...

bench:
	$(GO) test -run '^$$' -bench . -benchmem $(PKGS)

bench-flush:
	$(GO) run ./flushhint/cmd/bench-flush

# Guest flush benchmark: QEMU 11.1 built-in virtio-pmem vs ours over vhost-user.
bench-guest:
	NVDIMM_BENCH_GUEST=1 $(GO) test -count=1 -tags integration -timeout 60m -run '^TestBenchGuest$$' -v ./integration/qemu/

demo:
	@./scripts/demo.sh   # builds bin/nvdimm-backend itself, beside the package install

clean:
	rm -rf bin
