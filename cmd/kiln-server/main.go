// Command kiln-server runs Kiln's REST API, scheduler and dispatcher; with
// --dev it is a complete single node with a local worker. `kiln-server admin`
// manages users, tokens and workers.
package main

import (
	"os"

	"github.com/kiln-ci/kiln/server/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:], nil)) }
