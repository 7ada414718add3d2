//go:build !testaids

package tasktype_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/taskd/taskd/internal/task"
)

// TestProductionRefusesLedger: without -tags testaids the sleep task has no
// ledger: a spec naming one is refused as an unknown field, and running
// such a spec anyway (a record written around the API) fails permanently
// without creating the file.
func TestProductionRefusesLedger(t *testing.T) {
	typ := sleepType(t)
	spec, ledger := ledgerSpec(t)
	err := typ.Validate(spec)
	if !errors.Is(err, task.ErrInvalid) || !strings.Contains(err.Error(), `unknown field "ledger"`) {
		t.Fatalf("Validate(%s) = %v, want ErrInvalid naming the unknown field ledger", spec, err)
	}
	err = typ.Run(context.Background(), spec, nil, &reporter{})
	if !task.IsPermanent(err) {
		t.Errorf("Run with a ledger: %v, want a permanent error", err)
	}
	if _, err := os.Stat(ledger); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the ledger file exists (or cannot be checked): %v", err)
	}
}
