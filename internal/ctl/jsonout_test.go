package ctl

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/taskd/taskd/api/taskdv1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// TestJSONShapes (issue 13): a spec is a JSON object, not an escaped
// string; unset fields are absent, not empty; the same message prints the
// same bytes; events' partial is a boolean with its reason beside it.
func TestJSONShapes(t *testing.T) {
	for _, tc := range []struct {
		name   string
		m      proto.Message
		has    []string
		absent []string
	}{
		{"task with a spec", &taskdv1.Task{Id: "t1", Type: "sleep", Spec: `{"duration":"1s"}`, State: "waiting"},
			[]string{`"spec":{"duration":"1s"}`, `"id":"t1"`}, []string{`\"duration`, `"runner"`, `"error"`, `"window":""`, `"started"`}},
		{"task without a spec", &taskdv1.Task{Id: "t1", Type: "noop", State: "succeeded", Created: timestamppb.Now()},
			[]string{`"state":"succeeded"`, `"created":"`}, []string{`"spec"`, `"reason"`, `"finished"`}},
		{"spec that is not an object stays a string", &taskdv1.Task{Id: "t1", Spec: `"x"`}, []string{`"spec":"\"x\""`}, nil},
		{"html characters kept", &taskdv1.Task{Id: "t1", Reason: "a < b & c"}, []string{`"reason":"a < b & c"`}, []string{`\u003c`}},
	} {
		b, err := toJSON(tc.m)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		out := string(b)
		if !json.Valid(b) {
			t.Errorf("%s: invalid JSON %s", tc.name, out)
		}
		for _, h := range tc.has {
			if !strings.Contains(out, h) {
				t.Errorf("%s: %s lacks %s", tc.name, out, h)
			}
		}
		for _, a := range tc.absent {
			if strings.Contains(out, a) {
				t.Errorf("%s: %s has %s", tc.name, out, a)
			}
		}
		for range 5 {
			if again, _ := toJSON(tc.m); !bytes.Equal(again, b) {
				t.Errorf("%s: unstable output %s vs %s", tc.name, again, b)
			}
		}
	}
	for _, partial := range []string{"", "n2 did not answer"} {
		var out bytes.Buffer
		g := &globals{out: &out}
		if err := g.printEventsJSON([]*taskdv1.Event{{Node: "n1", Type: "start"}}, partial); err != nil {
			t.Fatal(err)
		}
		var r struct {
			Events        []map[string]any `json:"events"`
			Partial       *bool            `json:"partial"`
			PartialReason string           `json:"partial_reason"`
		}
		if err := json.Unmarshal(out.Bytes(), &r); err != nil {
			t.Fatalf("events JSON: %v: %s", err, out.String())
		}
		if r.Partial == nil || *r.Partial != (partial != "") || r.PartialReason != partial || len(r.Events) != 1 {
			t.Errorf("events JSON with partial %q: %s", partial, out.String())
		}
	}
}

// TestTablesShowTimeZones (issue 13): times in tables carry their zone
// (the host's; time.Local is not changed here, other goroutines read it).
func TestTablesShowTimeZones(t *testing.T) {
	when := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	at := timestamppb.New(when)
	local := when.Local()
	zone := local.Format("MST")
	if want := local.Format("2006-01-02 15:04:05.000") + " " + zone + "\t"; !strings.HasPrefix(eventRow(&taskdv1.Event{Time: at, Node: "n1", Type: "start"}), want) {
		t.Errorf("event row %q, want it to start with %q", eventRow(&taskdv1.Event{Time: at, Node: "n1", Type: "start"}), want)
	}
	var out bytes.Buffer
	g := &globals{out: &out}
	if err := g.showTask(&taskdv1.Task{Id: "t1", Created: at, History: []*taskdv1.TaskAttempt{{N: 1, Runner: "n1", Started: at}}}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "from "+local.Format("15:04:05")+" "+zone) || !strings.Contains(out.String(), local.Format(time.RFC3339)) {
		t.Errorf("task show lacks zones:\n%s", out.String())
	}
}
