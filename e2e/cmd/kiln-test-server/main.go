// Command kiln-test-server is kiln-server with the test tasks of package
// e2e/testtasks as well, for the scenarios that run the server as a
// process of its own (the fault-injection suite). Never install it.
package main

import (
	"os"

	"github.com/kiln-ci/kiln/e2e/testtasks"
	"github.com/kiln-ci/kiln/server/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:], testtasks.Registry())) }
