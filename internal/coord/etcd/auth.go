package etcd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/auth"
	"go.etcd.io/etcd/server/v3/etcdserver/api/membership"
	etcderrors "go.etcd.io/etcd/server/v3/etcdserver/errors"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/taskd/taskd/internal/backoff"
)

// Auth layout of the embedded etcd. Daily traffic authenticates with the
// node certificate: etcd takes its common name (the node name) as the user,
// and the user's role allows the taskd prefix only. The root user (password
// in DATA_DIR/pki/secrets.json) is used for set-up and membership only.
const (
	RootUser  = "root"
	TaskdRole = "taskd"
	// KeyPrefix is the part of the key space the taskd role may read and
	// write; every store key taskd uses lies under it.
	KeyPrefix = "/taskd/"
)

// tlsMinVersion is the oldest TLS version either listener accepts.
const tlsMinVersion = tls.VersionTLS12

// ErrAdmit: a node cannot be admitted as a new member (name or peer URL
// taken by a started member, or the cluster cannot take a member now).
var ErrAdmit = errors.New("etcd: cannot admit member")

// ErrBusy: the cluster cannot change membership right now (a learner is
// still catching up, or not enough members are started); retry later.
var ErrBusy = errors.New("etcd: membership change not possible yet")

// rootClient connects to this member as the root user.
func (s *Server) rootClient() (*clientv3.Client, error) {
	c := s.ClientConfig()
	c.Username, c.Password = RootUser, s.cfg.Creds.Secrets.EtcdRootPassword
	return newClient(c, 5*time.Second, context.Background())
}

// ensureAuth makes sure etcd auth is on, with the root user, the taskd role
// and this node's user. Every member that holds the root password runs it
// at start; each step tolerates "already done", so members starting at the
// same time do not trip over each other. A client dialled while auth was
// still off has no token and is refused once another member enables it:
// the whole sequence then starts again on a new client.
func (s *Server) ensureAuth(ctx context.Context, log *slog.Logger) error {
	b := backoff.New(50*time.Millisecond, 2*time.Second)
	for {
		err := s.ensureAuthOnce(ctx)
		if err == nil {
			return nil
		}
		if errors.Is(err, ErrAuth) {
			return fmt.Errorf("%w: the root password in %s does not match the cluster's", err, s.cfg.Creds.Paths.Secrets())
		}
		log.Debug("etcd auth set-up not done yet, retrying", "err", err)
		if b.Wait(ctx) != nil {
			return fmt.Errorf("etcd auth set-up: %w (last error: %w)", ctx.Err(), err)
		}
	}
}

func (s *Server) ensureAuthOnce(ctx context.Context) error {
	cli, err := s.rootClient()
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := cli.AuthStatus(ctx)
	if err != nil {
		return fmt.Errorf("etcd auth status: %w", err)
	}
	if !st.Enabled {
		if _, err := cli.UserAdd(ctx, RootUser, s.cfg.Creds.Secrets.EtcdRootPassword); err != nil && !errors.Is(err, rpctypes.ErrUserAlreadyExist) {
			return fmt.Errorf("etcd add user root: %w", err)
		}
		if _, err := cli.UserGrantRole(ctx, RootUser, "root"); err != nil {
			return fmt.Errorf("etcd grant root role: %w", err)
		}
	}
	if err := ensureNodeUser(ctx, cli, s.cfg.Creds.Name); err != nil {
		return err
	}
	if !st.Enabled {
		if _, err := cli.AuthEnable(ctx); err != nil {
			return fmt.Errorf("etcd auth enable: %w", err)
		}
	}
	return nil
}

// ensureNodeUser creates the taskd role (read and write under KeyPrefix)
// and a user for node with that role and no password: it can only be used
// with a certificate naming the node.
func ensureNodeUser(ctx context.Context, cli *clientv3.Client, node string) error {
	if _, err := cli.RoleAdd(ctx, TaskdRole); err != nil && !errors.Is(err, rpctypes.ErrRoleAlreadyExist) {
		return fmt.Errorf("etcd add role %s: %w", TaskdRole, err)
	}
	if _, err := cli.RoleGrantPermission(ctx, TaskdRole, KeyPrefix, clientv3.GetPrefixRangeEnd(KeyPrefix),
		clientv3.PermissionType(clientv3.PermReadWrite)); err != nil {
		return fmt.Errorf("etcd grant %s on %s: %w", TaskdRole, KeyPrefix, err)
	}
	if _, err := cli.UserAddWithOptions(ctx, node, "", &clientv3.UserAddOptions{NoPassword: true}); err != nil && !errors.Is(err, rpctypes.ErrUserAlreadyExist) {
		return fmt.Errorf("etcd add user %s: %w", node, err)
	}
	if _, err := cli.UserGrantRole(ctx, node, TaskdRole); err != nil {
		return fmt.Errorf("etcd grant role %s to %s: %w", TaskdRole, node, err)
	}
	return nil
}

// Admit prepares the cluster for a new member: the node's etcd user, and
// the member itself, added as a learner so that the cluster keeps its
// quorum until the new member has caught up (it promotes itself then, see
// promoteSelf). It returns the initial-cluster string the new member starts
// with. A retried admission whose member (same peer URL) has not started
// yet is answered again instead of adding a second member.
func (s *Server) Admit(ctx context.Context, name, peerURL string) (string, error) {
	if _, err := parseURL(peerURL); err != nil {
		return "", fmt.Errorf("%w: peer URL: %w", ErrAdmit, err)
	}
	// One admission at a time through this member: two joins at once
	// would otherwise propose two membership changes at once (see below).
	s.admitMu.Lock()
	defer s.admitMu.Unlock()
	cli, err := s.rootClient()
	if err != nil {
		return "", err
	}
	defer cli.Close()
	list, err := cli.MemberList(ctx)
	if err != nil {
		return "", wrap("member list", "", err)
	}
	var newID uint64
	for _, m := range list.Members {
		hasURL := slices.Contains(m.PeerURLs, peerURL)
		switch {
		case m.Name == name && !hasURL:
			return "", fmt.Errorf("%w: a member named %q already exists with peer URLs %v", ErrAdmit, name, m.PeerURLs)
		case hasURL && m.Name != "":
			return "", fmt.Errorf("%w: peer URL %s belongs to the started member %q", ErrAdmit, peerURL, m.Name)
		case hasURL:
			newID = m.ID // added before, never started: answer again
		}
	}
	if err := ensureNodeUser(ctx, cli, name); err != nil {
		return "", err
	}
	members := list.Members
	if newID == 0 {
		// Bounded: etcd takes one membership change at a time, and a
		// second proposed while another (a learner promoting itself) is
		// pending is dropped by raft without an answer; the call then
		// hangs until its deadline. Ended here, the joiner retries, and
		// the retry finds the member if it was added after all.
		actx, cancel := context.WithTimeout(ctx, memberAddTimeout)
		resp, err := cli.MemberAddAsLearner(actx, []string{peerURL})
		cancel()
		if err != nil {
			return "", memberAddError(ctx, err)
		}
		newID, members = resp.Member.ID, resp.Members
	}
	var parts []string
	for _, m := range members {
		n := m.Name
		if m.ID == newID {
			n = name
		}
		for _, u := range m.PeerURLs {
			parts = append(parts, n+"="+u)
		}
	}
	return strings.Join(parts, ","), nil
}

// promoteOnce asks for the promotion as etcd's root user: membership
// changes need root once auth is on, in-process calls as much as gRPC ones.
func (s *Server) promoteOnce(ctx context.Context) error {
	resp, err := s.e.Server.Authenticate(ctx, &pb.AuthenticateRequest{Name: RootUser, Password: s.cfg.Creds.Secrets.EtcdRootPassword})
	switch {
	case errors.Is(err, auth.ErrAuthNotEnabled):
	case err != nil:
		return fmt.Errorf("authenticate as root: %w", err)
	default:
		ctx = metadata.NewIncomingContext(ctx, metadata.Pairs(rpctypes.TokenFieldNameGRPC, resp.Token))
	}
	_, err = s.e.Server.PromoteMember(ctx, uint64(s.e.Server.MemberID()))
	return err
}

// memberAddTimeout bounds one member add; see Admit.
const memberAddTimeout = 8 * time.Second

// memberAddError sorts a failed member add: a refusal that a retry cannot
// change is ErrAdmit; a busy cluster, or a call that timed out or lost its
// connection while the caller's ctx is still live, is ErrBusy, which the
// joiner retries.
func memberAddError(ctx context.Context, err error) error {
	retry := isBusy(err) || transient(err) || status.Code(err) == codes.DeadlineExceeded
	if retry && ctx.Err() == nil {
		return fmt.Errorf("%w: member add: %w", ErrBusy, err)
	}
	return fmt.Errorf("%w: member add: %w", ErrAdmit, err)
}

// isBusy: etcd cannot change membership yet (a learner is still catching
// up, or too few members are started); the same request may succeed later.
func isBusy(err error) bool {
	return errors.Is(err, rpctypes.ErrTooManyLearners) || errors.Is(err, rpctypes.ErrMemberNotEnoughStarted) ||
		errors.Is(err, rpctypes.ErrUnhealthy)
}

// promoteSelf turns this member from a learner into a voting member once
// it has caught up with the leader. It runs in the member itself (the
// promotion goes to the raft leader over the authenticated peer link), so
// a joining node needs no other member's client port.
func (s *Server) promoteSelf(ctx context.Context, log *slog.Logger) error {
	b := backoff.New(50*time.Millisecond, 2*time.Second)
	for s.e.Server.IsLearner() {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := s.promoteOnce(pctx)
		cancel()
		switch {
		case err == nil, errors.Is(err, membership.ErrMemberNotLearner):
			log.Info("etcd member promoted from learner to voting member", "member", s.cfg.Name)
			return nil
		case errors.Is(err, etcderrors.ErrLearnerNotReady):
			log.Debug("etcd learner not caught up yet", "member", s.cfg.Name)
		default:
			log.Debug("etcd learner promotion failed, retrying", "member", s.cfg.Name, "err", err)
		}
		if b.Wait(ctx) != nil {
			return fmt.Errorf("embedded etcd %s: still a learner: %w", s.cfg.Name, ctx.Err())
		}
	}
	return nil
}
