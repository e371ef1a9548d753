# Kiln — the two set-up commands are `make run` and `make test`.
GO ?= go
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2
BIN := bin
DATA_DIR ?= kiln-data
LISTEN ?= 127.0.0.1:8080

.PHONY: all build run test lint fmt bench bench-go clean-data

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/kiln-server ./cmd/kiln-worker ./cmd/kiln

## run: a complete single node (embedded NATS, SQLite, a local worker) in ./kiln-data
run: build
	$(BIN)/kiln-server --dev --data-dir $(DATA_DIR) --listen $(LISTEN)

## test: the whole suite, SQLite + embedded NATS and PostgreSQL + external NATS
## (set KILN_REQUIRE_ALL=1 to fail instead of skipping when a service is missing)
test:
	$(GO) test -race -count=1 -timeout 30m ./...

## chaos: the fault-injection suite at full size (CHAOS_SIZE requests): a real
## kiln-server, nats-server, PostgreSQL and worker processes, with kill -9 of a
## worker, the server and nats-server, a PostgreSQL restart and a worker
## stopped past its lease; it prints the counts and fails if one is wrong.
## make test runs it at a smaller size (KILN_CHAOS_SIZE, default 60).
CHAOS_SIZE ?= 300
.PHONY: chaos
chaos:
	KILN_CHAOS_SIZE=$(CHAOS_SIZE) $(GO) test -count=1 -timeout 30m -v -run TestChaos ./e2e/chaos

## fuzz: run every fuzz target (func FuzzXxx in a _test.go file) for FUZZTIME
## each, one after the other, since go test -fuzz takes one target per run;
## their seed corpora also run in make test. A failing input is written to
## the package's testdata/fuzz/FuzzXxx/; the failed targets are listed at the
## end. FUZZTIME also takes a number of runs (FUZZTIME=200000x): Go 1.26 may
## end a timed run on a loaded machine with a bare "context deadline exceeded"
## and no failing input (golang/go#75804), which a count avoids.
FUZZTIME ?= 30s
.PHONY: fuzz
fuzz:
	@failed=; for file in $$(grep -rl --include='*_test.go' --exclude-dir=testdata --exclude-dir=.git '^func Fuzz' . | sort); do \
		dir=$$(dirname $$file); \
		for target in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' $$file); do \
			echo "== $$dir $$target (FUZZTIME=$(FUZZTIME))"; \
			$(GO) test -run '^$$' -fuzz "^$$target\$$" -fuzztime $(FUZZTIME) $$dir || failed="$$failed $$dir:$$target"; \
		done; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: failed:$$failed"; exit 1; fi

lint:
	@out="$$(gofmt -l .)"; if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

fmt:
	gofmt -w .

clean-data:
	rm -rf $(DATA_DIR)

## bench: the benchmark harness (cmd/kiln-bench) on SQLite + embedded NATS and
## PostgreSQL + the external nats-server; prints a Markdown table and writes
## docs/benchmarks.md. BENCH_ARGS adds options (kiln-bench --help), e.g.
## BENCH_ARGS='--backends sqlite --scenarios e2e'.
BENCH_ARGS ?=
bench:
	$(GO) build -o $(BIN)/ ./cmd/kiln-bench ./cmd/kiln-server ./cmd/kiln-worker
	KILN_BENCH_RERUN="make bench$(if $(BENCH_ARGS), BENCH_ARGS='$(BENCH_ARGS)')" \
		$(BIN)/kiln-bench --kiln-server $(BIN)/kiln-server --kiln-worker $(BIN)/kiln-worker $(BENCH_ARGS)

## bench-go: the Go benchmarks of the hot paths (matching, JSON Schema
## validation, the store's claim), for regressions between commits.
bench-go:
	$(GO) test -run '^$$' -bench . -benchmem ./server/scheduler ./tasks ./server/store

## deb: the Debian packages kiln-server, kiln-worker and kiln-client
## (debian/), built from this tree with dpkg-buildpackage and the Go on PATH;
## the .deb files land in the parent directory. Needs debhelper and dpkg-dev.
## Offline builds: /usr/share/doc/kiln-server/README.Debian, or
## debian/kiln-server.README.Debian.
.PHONY: deb deb-test
deb:
	dpkg-buildpackage -us -uc -b

## deb-test: the packaging check of CI (.ci/deb-test; root): build the
## packages in a copy of this tree, lintian, systemd-analyze verify, install
## them, run a noop through the installed server, worker and client, then
## remove and purge them.
deb-test:
	bash .ci/deb-test
