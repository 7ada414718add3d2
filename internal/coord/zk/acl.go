package zk

import (
	"context"
	"errors"
	"fmt"

	"github.com/go-zookeeper/zk"
)

// ErrOpenACL: a znode that taskd would use grants rights to somebody
// other than the cluster's digest credential.
var ErrOpenACL = errors.New("zookeeper: znode is open to others")

// CheckOwned verifies the ACLs of the znodes taskd's data hangs from: the
// chroot and the root directory key (e.g. "/taskd") below it. One that does
// not exist yet is fine (taskd creates it with its own ACL); one that exists
// must grant rights to the cluster's digest credential alone. A tree made by
// an older, unauthenticated taskd (world-writable) is refused instead of
// used: anybody could have written into it.
func (s *Store) CheckOwned(ctx context.Context, root string) error {
	c, err := s.conn(ctx)
	if err != nil {
		return err
	}
	paths := []string{s.abs(root)}
	if s.chroot != "" {
		paths = append([]string{s.chroot}, paths...)
	}
	for _, p := range paths {
		acl, _, err := c.GetACL(p)
		if errors.Is(err, zk.ErrNoNode) {
			continue
		}
		if err != nil {
			return mapErr("read ACL of", p, err)
		}
		for _, a := range acl {
			if a.Scheme != s.acl[0].Scheme || a.ID != s.acl[0].ID {
				return fmt.Errorf("%w: %s grants %s to %s:%s; it was not made by this cluster's taskd with its credential. "+
					"Remove it (zkCli: deleteall %s) if nothing else uses it, or give taskd another chroot", ErrOpenACL, p, perms(a.Perms), a.Scheme, a.ID, p)
			}
		}
	}
	return nil
}

// perms spells ZooKeeper permission bits the way zkCli prints them.
func perms(p int32) string {
	out := ""
	for _, b := range []struct {
		bit  int32
		name string
	}{{zk.PermCreate, "c"}, {zk.PermDelete, "d"}, {zk.PermRead, "r"}, {zk.PermWrite, "w"}, {zk.PermAdmin, "a"}} {
		if p&b.bit != 0 {
			out += b.name
		}
	}
	return out
}
