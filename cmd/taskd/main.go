// Command taskd is the taskd daemon. See docs/configuration.md for flags and
// docs/exit-codes.md for what its exit status means.
package main

import (
	"os"

	"github.com/taskd/taskd/internal/daemon"
)

func main() { os.Exit(daemon.Main(os.Args[1:])) }
