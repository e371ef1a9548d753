# Kiln — the two set-up commands are `make run` and `make test`.
GO ?= go
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2
BIN := bin
DATA_DIR ?= kiln-data
LISTEN ?= 127.0.0.1:8080

.PHONY: all build run test lint fmt bench clean-data

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/kiln-server ./cmd/kiln-worker ./cmd/kiln

## run: a complete single node (embedded NATS, SQLite, a local worker) in ./kiln-data
run: build
	$(BIN)/kiln-server --dev --data-dir $(DATA_DIR) --listen $(LISTEN)

## test: the whole suite, SQLite + embedded NATS and PostgreSQL + external NATS
## (set KILN_REQUIRE_ALL=1 to fail instead of skipping when a service is missing)
test:
	$(GO) test -race -count=1 -timeout 20m ./...

lint:
	@out="$$(gofmt -l .)"; if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

fmt:
	gofmt -w .

clean-data:
	rm -rf $(DATA_DIR)
