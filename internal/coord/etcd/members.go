package etcd

import (
	"context"
	"errors"
	"fmt"
	"slices"
)

// ErrNoSuchMember: the embedded etcd has no member of that name.
var ErrNoSuchMember = errors.New("etcd: no member has that name")

// MemberNames are the names of the embedded etcd's members as this member
// knows them, read locally: it needs no quorum, so a node that lost its
// peers still says who they were. A member added but never started has no
// name yet and is left out.
func (s *Server) MemberNames() []string {
	var out []string
	for _, m := range s.e.Server.Cluster().Members() {
		if m.Name != "" {
			out = append(out, m.Name)
		}
	}
	slices.Sort(out)
	return out
}

// RemoveMember removes the etcd member called name from the cluster, as
// etcd's root user (membership changes need root). The caller checks that
// the member's node is not running: removing a member shrinks the quorum.
func (s *Server) RemoveMember(ctx context.Context, name string) error {
	if name == s.cfg.Name {
		return fmt.Errorf("%w: %s is this member", ErrAdmit, name)
	}
	var id uint64
	for _, m := range s.e.Server.Cluster().Members() {
		if m.Name == name {
			id = uint64(m.ID)
		}
	}
	if id == 0 {
		return fmt.Errorf("%w: %s", ErrNoSuchMember, name)
	}
	cli, err := s.rootClient()
	if err != nil {
		return err
	}
	defer cli.Close()
	if _, err := cli.MemberRemove(ctx, id); err != nil {
		if isBusy(err) {
			return fmt.Errorf("%w: %w", ErrBusy, err)
		}
		return wrap("member remove", name, err)
	}
	return nil
}
