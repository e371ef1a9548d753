// Command kiln-test-worker is kiln-worker with the test tasks of package
// e2e/testtasks as well (the script task), for the e2e scenarios that run
// a worker as a process of its own. Never install it.
package main

import (
	"os"

	"github.com/kiln-ci/kiln/e2e/testtasks"
	"github.com/kiln-ci/kiln/worker/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:], testtasks.Registry())) }
