// Command taskd-bench measures taskd's failover, handover, reconnect and idle
// figures on real processes. It prints figures; it asserts nothing.
package main

import (
	"os"

	"github.com/taskd/taskd/internal/bench"
)

func main() { os.Exit(bench.Main(os.Args[1:], os.Stdout)) }
