// Command mytaskd is a taskd with one more task type, "countdown", built
// from a module outside the taskd repository with the public SDK
// (github.com/taskd/taskd/sdk). It takes every flag and command of taskd.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/taskd/taskd/sdk"
)

// countdown counts "from" down to zero, one step per "step" (a Go
// duration), checkpointing the number left after every step.
type countdown struct{}

type spec struct {
	From int    `json:"from"`
	Step string `json:"step"`
}

func parse(raw json.RawMessage) (spec, time.Duration, error) {
	var s spec
	if err := json.Unmarshal(raw, &s); err != nil {
		return s, 0, fmt.Errorf("%w: countdown spec: %w", sdk.ErrInvalid, err)
	}
	d, err := time.ParseDuration(s.Step)
	if err != nil || d <= 0 || s.From < 0 {
		return s, 0, fmt.Errorf("%w: countdown wants {\"from\": N >= 0, \"step\": DURATION > 0}", sdk.ErrInvalid)
	}
	return s, d, nil
}

func (countdown) Validate(raw json.RawMessage) error {
	_, _, err := parse(raw)
	return err
}

func (countdown) Run(ctx context.Context, raw json.RawMessage, checkpoint []byte, r sdk.Reporter) error {
	s, step, err := parse(raw)
	if err != nil {
		return sdk.Permanent(err)
	}
	left := s.From
	if checkpoint != nil {
		if left, err = strconv.Atoi(string(checkpoint)); err != nil {
			return sdk.Permanent(fmt.Errorf("checkpoint %q: %w", checkpoint, err))
		}
	}
	t := time.NewTicker(step)
	defer t.Stop()
	for left > 0 {
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-t.C:
		}
		left--
		p := sdk.Progress{Done: int64(s.From - left), Total: int64(s.From)}
		if err := r.Checkpoint([]byte(strconv.Itoa(left)), p); err != nil {
			return err // fenced, or asked to stop
		}
	}
	return nil
}

func main() { sdk.Main(sdk.WithType("countdown", countdown{})) }
