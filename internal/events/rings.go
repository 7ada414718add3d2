package events

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/keys"
)

// Dir is the store directory of node's ring; an invalid root or node name
// is an error (wrapping keys.ErrInvalid).
func Dir(root, node string) (string, error) {
	rt, err := keys.NewRoot(root)
	if err != nil {
		return "", err
	}
	return rt.Events().RingDir(node)
}

// Rings is the members' event rings under one cluster root: the narrow
// view of the store that the API's event service needs (read and watch a
// ring), bound to the root it was built with.
type Rings struct {
	kv  coord.Store
	lay keys.Events
}

// NewRings binds the event rings under root to kv.
func NewRings(kv coord.Store, root keys.Root) *Rings {
	return &Rings{kv: kv, lay: root.Events()}
}

// Read reads the rings of nodes. A name that is not a valid node name (a
// member record written around taskd) is skipped: no key is built from it.
func (r *Rings) Read(ctx context.Context, nodes []string) ([]Event, error) {
	var out []Event
	for _, n := range nodes {
		dir, err := r.lay.RingDir(n)
		if errors.Is(err, keys.ErrInvalid) {
			continue
		}
		if err != nil {
			return out, err
		}
		kvs, err := r.kv.List(ctx, dir)
		if err != nil {
			return out, err
		}
		for _, k := range kvs {
			var e Event
			if json.Unmarshal(k.Value, &e) == nil {
				out = append(out, e)
			}
		}
	}
	return out, nil
}

// Watch watches node's ring; an invalid node name is an error (wrapping
// keys.ErrInvalid) and starts no watch.
func (r *Rings) Watch(ctx context.Context, node string) (*coord.Watcher, error) {
	dir, err := r.lay.RingDir(node)
	if err != nil {
		return nil, err
	}
	return r.kv.Watch(ctx, dir), nil
}
