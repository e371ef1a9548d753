// Command kiln is the client of a Kiln server; see package client/cli.
package main

import (
	"os"

	"github.com/kiln-ci/kiln/client/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) }
