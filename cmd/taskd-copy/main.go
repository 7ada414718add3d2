// Command taskd-copy is `taskd volume copy` in a binary of its own: the same
// flags, behaviour and exit codes (docs/volume-copy.md, docs/exit-codes.md),
// without the daemon linked in, so it starts in milliseconds.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/taskd/taskd/internal/volcmd"
)

func main() {
	cmd := volcmd.NewCopyCmd("taskd-copy SRC DST")
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return volcmd.UsageError{Err: err} })
	err := cmd.Execute()
	code := volcmd.ExitCode(err)
	if err != nil {
		fmt.Fprintf(os.Stderr, "taskd-copy: %v (exit %d)\n", err, code)
	}
	os.Exit(code)
}
