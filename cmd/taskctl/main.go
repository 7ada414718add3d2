// Command taskctl is the taskd command-line client. See docs/exit-codes.md
// for what its exit status means.
package main

import (
	"os"

	"github.com/taskd/taskd/internal/ctl"
)

func main() { os.Exit(ctl.Main(os.Args[1:], os.Stdout, os.Stderr)) }
