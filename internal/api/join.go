package api

import (
	"context"
	"errors"
	"strings"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/bootstrap"
)

// Joiner admits new nodes (bootstrap.Server).
type Joiner interface {
	Join(ctx context.Context, remoteAddr, credential string, req bootstrap.Request) (bootstrap.Response, error)
}

// Join implements ClusterService.Join. The join credential in the bearer
// header is the request's only authentication; the Joiner checks it before
// it looks at anything else.
func (s *clusterService) Join(ctx context.Context, req *connect.Request[taskdv1.JoinRequest]) (*connect.Response[taskdv1.JoinResponse], error) {
	if s.join == nil {
		return nil, connect.NewError(connect.CodeUnimplemented, errors.New("this node does not admit new nodes"))
	}
	cred, ok := strings.CutPrefix(req.Header().Get("Authorization"), "Bearer ")
	if !ok || cred == "" {
		return nil, toConnect(bootstrap.ErrUnauthenticated)
	}
	m := req.Msg
	r, err := s.join.Join(ctx, req.Peer().Addr, cred, bootstrap.Request{
		Name: m.Name, CSR: m.Csr, APIAddress: m.ApiAddress,
		EtcdPeerURL: m.EtcdPeerUrl, EtcdClientURL: m.EtcdClientUrl, Hosts: m.Hosts,
	})
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&taskdv1.JoinResponse{
		CaCert: r.CACert, CaKey: r.CAKey, NodeCert: r.NodeCert,
		EtcdRootPassword: r.Secrets.EtcdRootPassword, ZkDigest: r.Secrets.ZKDigest,
		Coordinator: r.Coordinator, EtcdInitialCluster: r.EtcdInitialCluster,
	}), nil
}
