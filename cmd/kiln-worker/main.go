// Command kiln-worker is the worker daemon of a build or lab machine; see
// package worker/cli.
package main

import (
	"os"

	"github.com/kiln-ci/kiln/worker/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:], nil)) }
