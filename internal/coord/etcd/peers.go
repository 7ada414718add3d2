package etcd

import (
	"errors"
	"fmt"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.etcd.io/etcd/client/pkg/v3/types"
)

// ErrNoPeerLinks: this etcd version does not export the gauge PeerLinks
// reads (it was renamed or dropped).
var ErrNoPeerLinks = errors.New("etcd: no reading of the raft transport's peer links")

// activePeersOpts are those of etcd's gauge of its raft transport's peer
// links (rafthttp's peer status): 1 while a stream to or from the peer is
// connected, labelled with the local and remote member IDs.
var activePeersOpts = prometheus.GaugeOpts{
	Namespace: "etcd", Subsystem: "network", Name: "active_peers",
	Help: "The current number of active peer connections.",
}

var (
	activePeersOnce sync.Once
	activePeers     prometheus.Collector
	activePeersErr  error
)

// activePeerGauge finds etcd's gauge in the default registry. etcd
// exports no handle on its transport; registering a twin of the gauge
// makes the registry hand back the one etcd registered.
func activePeerGauge() (prometheus.Collector, error) {
	activePeersOnce.Do(func() {
		twin := prometheus.NewGaugeVec(activePeersOpts, []string{"Local", "Remote"})
		err := prometheus.DefaultRegisterer.Register(twin)
		var are prometheus.AlreadyRegisteredError
		switch {
		case errors.As(err, &are):
			activePeers = are.ExistingCollector
		case err == nil:
			prometheus.DefaultRegisterer.Unregister(twin)
			activePeersErr = ErrNoPeerLinks
		default:
			activePeersErr = fmt.Errorf("%w: %w", ErrNoPeerLinks, err)
		}
	})
	return activePeers, activePeersErr
}

// PeerLinks reports, by member name, whether this member's raft transport
// is connected to each other member now. A link drops at once when the
// peer's process dies (its sockets close), and within etcd's connection
// read timeout (5 s) when the peer goes silent: every stream carries a
// link heartbeat each 1.7 s, even between two followers. It needs no
// quorum: the reading is this member's own. A member never connected
// since this process started reads as unconnected.
func (s *Server) PeerLinks() (map[string]bool, error) {
	g, err := activePeerGauge()
	if err != nil {
		return nil, err
	}
	self := s.e.Server.MemberID()
	up := map[types.ID]bool{}
	ch := make(chan prometheus.Metric, 64)
	go func() { g.Collect(ch); close(ch) }()
	for m := range ch {
		var d dto.Metric
		if err := m.Write(&d); err != nil {
			continue
		}
		var local, remote string
		for _, l := range d.GetLabel() {
			switch l.GetName() {
			case "Local":
				local = l.GetValue()
			case "Remote":
				remote = l.GetValue()
			}
		}
		id, err := types.IDFromString(remote)
		if err != nil || local != self.String() {
			continue
		}
		up[id] = d.GetGauge().GetValue() > 0
	}
	out := map[string]bool{}
	for _, m := range s.e.Server.Cluster().Members() {
		if m.ID != self && m.Name != "" {
			out[m.Name] = up[m.ID]
		}
	}
	return out, nil
}

// Name is this member's name.
func (s *Server) Name() string { return s.cfg.Name }
