package quorum

import (
	"cmp"
	"encoding/json"
	"slices"
	"time"
)

// Member is the record a node keeps, bound to its session, at
// ROOT/members/NAME.
type Member struct {
	Name            string `json:"name"`
	NodeID          string `json:"node_id"`
	Address         string `json:"address"`
	Version         string `json:"version"`
	Priority        int    `json:"priority"`
	CurrentPriority int    `json:"current_priority"`
	Health          string `json:"health"`
	HealthReason    string `json:"health_reason,omitempty"`
	// Starved: the node is starved of CPU (internal/starve) and
	// advertises current priority 0; StarvedReason gives the figures.
	// Records of older versions have neither and read as not starved.
	Starved       bool      `json:"starved,omitempty"`
	StarvedReason string    `json:"starved_reason,omitempty"`
	Session       string    `json:"session"`
	SessionID     string    `json:"session_id"`
	StartedAt     time.Time `json:"started_at"`
	JoinedAt      time.Time `json:"joined_at"`

	// joinOrder is the store's creation order of the record.
	joinOrder int64
}

// LeaderRecord is the election record at ROOT/election/leader, bound to the
// leader's session.
type LeaderRecord struct {
	Name      string    `json:"name"`
	NodeID    string    `json:"node_id"`
	SessionID string    `json:"session_id"`
	Epoch     int64     `json:"epoch"`
	ElectedAt time.Time `json:"elected_at"`
}

// epochRecord is the persistent election counter at ROOT/election/epoch. Its
// store version is the leaders' fencing token.
type epochRecord struct {
	Epoch int64 `json:"epoch"`
}

// specifiedRecord restricts who may lead, ROOT/election/specified.
type specifiedRecord struct {
	Members []string  `json:"members"`
	SetAt   time.Time `json:"set_at"`
}

// priorityRecord is an operator's priority for a node, ROOT/config/priority/NAME.
type priorityRecord struct {
	Priority int       `json:"priority"`
	SetAt    time.Time `json:"set_at"`
}

func decode[T any](b []byte) (T, error) {
	var v T
	err := json.Unmarshal(b, &v)
	return v, err
}

// encode marshals a record. Records are plain structs of strings, numbers
// and times, which always marshal.
func encode(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}

// outranks reports whether a should lead rather than b: higher current
// priority, then earlier join.
func outranks(a, b Member) bool {
	if a.CurrentPriority != b.CurrentPriority {
		return a.CurrentPriority > b.CurrentPriority
	}
	if a.joinOrder != b.joinOrder {
		return a.joinOrder < b.joinOrder
	}
	return a.Name < b.Name
}

// ranked returns the members eligible to lead, best first. An empty
// specified list means everyone is eligible.
func ranked(members map[string]Member, specified []string) []Member {
	out := make([]Member, 0, len(members))
	for _, m := range members {
		if len(specified) > 0 && !slices.Contains(specified, m.Name) {
			continue
		}
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b Member) int {
		if outranks(a, b) {
			return -1
		}
		if outranks(b, a) {
			return 1
		}
		return cmp.Compare(a.Name, b.Name)
	})
	return out
}
