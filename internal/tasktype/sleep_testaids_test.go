//go:build testaids

package tasktype_test

import (
	"context"
	"os"
	"strings"
	"testing"
)

// TestTestAidsLedger: with -tags testaids the ledger gets one line per unit
// of work, "ID ATTEMPT ELAPSED_MS UNIX_NANO".
func TestTestAidsLedger(t *testing.T) {
	typ := sleepType(t)
	spec, ledger := ledgerSpec(t)
	if err := typ.Validate(spec); err != nil {
		t.Fatal(err)
	}
	if err := typ.Run(context.Background(), spec, nil, &reporter{}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(ledger)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[2], "0f8fad5b-d9cb-469f-a165-70867728950e 1 30 ") {
		t.Errorf("ledger %q, want 3 lines ending at 30 ms", b)
	}
}
