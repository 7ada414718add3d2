package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/taskd/taskd/internal/bootstrap"
	"github.com/taskd/taskd/internal/node"
	"github.com/taskd/taskd/internal/pki"
	"golang.org/x/term"
)

// applyClusterFile fills the store flags that neither the command line,
// the environment nor the config file set from DATA_DIR/cluster.json, which
// `taskd join` wrote: the node then starts as the member it was admitted
// as, with nothing to repeat on the command line.
func applyClusterFile(fs *pflag.FlagSet, dataDir string) error {
	cf, ok, err := bootstrap.ReadClusterFile(dataDir)
	if err != nil || !ok {
		if err != nil {
			return fmt.Errorf("%w: %w", node.ErrConfig, err)
		}
		return nil
	}
	for flag, v := range map[string]string{
		"coordinator": cf.Coordinator, "etcd-initial-cluster": cf.EtcdInitialCluster, "etcd-cluster-state": cf.EtcdClusterState,
	} {
		if f := fs.Lookup(flag); f != nil && !f.Changed && v != "" {
			if err := fs.Set(flag, v); err != nil {
				return fmt.Errorf("%w: %s: %s=%q: %w", node.ErrConfig, bootstrap.ClusterPath(dataDir), flag, v, err)
			}
		}
	}
	return nil
}

// certHosts are the addresses a node's certificate must name: those of its
// flags (API, etcd URLs), and --cert-host.
func (d *daemonFlags) certHosts() []string {
	c := d.cfg
	return append(pki.HostsOf(c.Listen, c.Advertise, c.EtcdClientURL, c.EtcdPeerURL), d.certHostsFlag...)
}

// joinsOthers reports whether the embedded etcd settings name other
// members: such a node must be provisioned or joined, not initialised (its
// own new CA would be foreign to its peers).
func joinsOthers(c node.Config) bool {
	if c.Coordinator != "embedded" && c.Coordinator != "" {
		return false
	}
	if c.EtcdClusterState == "existing" {
		return true
	}
	for _, m := range strings.Split(c.EtcdInitialCluster, ",") {
		if name, _, ok := strings.Cut(m, "="); ok && name != c.Name {
			return true
		}
	}
	return false
}

// autoInit makes plain `taskd` on an empty data directory a new
// single-node cluster, so that a first start is one command.
func autoInit(d *daemonFlags, log *slog.Logger) error {
	if pki.Initialized(d.cfg.DataDir) {
		return nil
	}
	if joinsOthers(d.cfg) {
		return fmt.Errorf("%w: %s holds no credentials, and the etcd settings name other members: "+
			"join the cluster with `taskd join --server MEMBER:PORT --join-token-file FILE`, or provision DATA_DIR/pki", node.ErrConfig, pki.In(d.cfg.DataDir).Dir)
	}
	if err := d.cfg.Validate(); err != nil {
		return err
	}
	tok, err := initCluster(d)
	if err != nil {
		return err
	}
	log.Info("created a new cluster: CA, node certificate and store secrets in "+pki.In(d.cfg.DataDir).Dir,
		"join_token_file", bootstrap.JoinTokenPath(d.cfg.DataDir), "ca_sha256", tok.CAHash)
	return nil
}

func initCluster(d *daemonFlags) (pki.JoinToken, error) {
	if err := os.MkdirAll(d.cfg.DataDir, 0o750); err != nil {
		return pki.JoinToken{}, fmt.Errorf("%w: %w", node.ErrDataDir, err)
	}
	tok, err := bootstrap.Init(d.cfg.DataDir, d.cfg.Name, d.certHosts(), time.Now())
	if err != nil {
		return pki.JoinToken{}, fmt.Errorf("%w: %w", node.ErrDataDir, err)
	}
	return tok, nil
}

func newInitCmd() *cobra.Command {
	d := newDaemonFlags()
	cmd := &cobra.Command{
		Use:   "init [flags]",
		Short: "create a new cluster on this node and run it",
		Long: "init creates the cluster's credentials in DATA_DIR/pki (a CA, this node's certificate for the hosts of\n" +
			"--listen, --advertise, --etcd-client-url, --etcd-peer-url and --cert-host, the store secrets), writes the\n" +
			"first join token to DATA_DIR/join.token, prints how other nodes join, and runs the daemon.\n" +
			"On a data directory that already holds credentials it just runs the daemon.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := d.prepare(cmd)
			if err != nil {
				return err
			}
			if pki.Initialized(d.cfg.DataDir) {
				log.Info("the data directory already holds cluster credentials; starting", "dir", pki.In(d.cfg.DataDir).Dir)
				return run(d.cfg, log)
			}
			if joinsOthers(d.cfg) {
				return fmt.Errorf("%w: --etcd-initial-cluster names other members or --etcd-cluster-state is existing: init makes a new cluster of this node alone", node.ErrConfig)
			}
			if err := d.cfg.Validate(); err != nil {
				return err
			}
			tok, err := initCluster(d)
			if err != nil {
				return err
			}
			printJoinHelp(cmd.OutOrStdout(), d, tok)
			return run(d.cfg, log)
		},
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	d.register(cmd.Flags())
	cmd.RunE = withSources(d, cmd.RunE)
	return cmd
}

// printJoinHelp says how other nodes join. The token itself (a root
// secret: it yields the CA key) is printed only to a terminal, never into
// a log; it is always in DATA_DIR/join.token.
func printJoinHelp(w io.Writer, d *daemonFlags, tok pki.JoinToken) {
	server := d.cfg.Advertise
	if server == "" {
		server = d.cfg.Listen
	}
	path := bootstrap.JoinTokenPath(d.cfg.DataDir)
	fmt.Fprintf(w, "taskd: created a new cluster (CA sha256 %s)\n", tok.CAHash)
	fmt.Fprintf(w, "taskd: join token in %s (mode 0600; it admits nodes: treat it like a root password)\n", path)
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprintf(w, "taskd: join token: %s\n", tok)
	}
	fmt.Fprintf(w, "taskd: on each other node, copy the token to a 0600 file and run:\n  taskd join --server %s --join-token-file FILE --name NAME [the same store flags]\n", server)
}

func newJoinCmd() *cobra.Command {
	d := newDaemonFlags()
	var server, tokenFile string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "join --server HOST:PORT [--join-token-file FILE] [flags]",
		Short: "join an existing cluster and run",
		Long: "join asks the member at --server to admit this node, authenticated by a join token (--join-token-file,\n" +
			"or the environment variable TASKD_JOIN_TOKEN), installs the credentials it is given in DATA_DIR/pki and\n" +
			"the store settings in DATA_DIR/cluster.json, and runs the daemon. The token pins the cluster CA: nothing\n" +
			"is sent to a server whose certificate chain does not contain it. The node's private key never leaves it.\n" +
			"On a data directory that already holds credentials it just runs the daemon.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := d.prepare(cmd)
			if err != nil {
				return err
			}
			if pki.Initialized(d.cfg.DataDir) {
				log.Info("the data directory already holds cluster credentials; starting", "dir", pki.In(d.cfg.DataDir).Dir)
				return run(d.cfg, log)
			}
			if server == "" {
				return usageError{fmt.Errorf("--server HOST:PORT (a member's API address) is required")}
			}
			tok, err := bootstrap.ReadJoinToken(tokenFile, os.Getenv("TASKD_JOIN_TOKEN"))
			if err != nil {
				return fmt.Errorf("%w: %w", node.ErrConfig, err)
			}
			if err := d.cfg.Validate(); err != nil {
				return err
			}
			if err := os.MkdirAll(d.cfg.DataDir, 0o750); err != nil {
				return fmt.Errorf("%w: %w", node.ErrDataDir, err)
			}
			ctx, cancel := signalContext(timeout)
			defer cancel()
			advertise := d.cfg.Advertise
			if advertise == "" {
				advertise = d.cfg.Listen
			}
			req := bootstrap.Request{Name: d.cfg.Name, APIAddress: advertise, Hosts: d.certHosts()}
			if d.cfg.Coordinator == "embedded" {
				req.EtcdPeerURL, req.EtcdClientURL = d.cfg.EtcdPeerURL, d.cfg.EtcdClientURL
			}
			log.Info("joining the cluster", "server", server, "ca_sha256", tok.CAHash)
			if err := bootstrap.Join(ctx, bootstrap.JoinParams{DataDir: d.cfg.DataDir, Server: server, Token: tok, Request: req, Log: log}); err != nil {
				return fmt.Errorf("join through %s: %w", server, err)
			}
			// The cluster's store settings now apply where no flag set them.
			if err := applyClusterFile(cmd.Flags(), d.cfg.DataDir); err != nil {
				return err
			}
			log.Info("joined the cluster; starting", "coordinator", d.cfg.Coordinator)
			return run(d.cfg, log)
		},
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	d.register(cmd.Flags())
	f := cmd.Flags()
	f.StringVar(&server, "server", "", "API address (host:port) of a cluster member to join through")
	f.StringVar(&tokenFile, "join-token-file", "", "file (mode 0600) holding the join token (default: the environment variable TASKD_JOIN_TOKEN)")
	f.DurationVar(&timeout, "join-timeout", 5*time.Minute, "how long to keep trying while no member can admit this node (exit 69 after)")
	cmd.RunE = withSources(d, cmd.RunE)
	return cmd
}

// signalContext ends after timeout, or at SIGINT/SIGTERM.
func signalContext(timeout time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	sctx, stop := signalNotifyContext(ctx)
	return sctx, func() { stop(); cancel() }
}

func newCertCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "cert", Short: "manage this node's certificate", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return usageError{fmt.Errorf("use: taskd cert renew")} }}
	d := newDaemonFlags()
	renew := &cobra.Command{
		Use:   "renew [flags]",
		Short: "re-issue this node's certificate from the local CA key",
		Long: "renew signs a new certificate for this node's key with the CA key in DATA_DIR/pki, valid for a year,\n" +
			"for the hosts of the current certificate plus those of --listen, --advertise, --etcd-client-url,\n" +
			"--etcd-peer-url and --cert-host. Restart taskd to use it.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := d.prepare(cmd); err != nil {
				return err
			}
			b, err := bootstrap.RenewCert(d.cfg.DataDir, d.certHosts(), time.Now())
			if err != nil {
				return fmt.Errorf("%w: %w", node.ErrDataDir, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "taskd: renewed %s for %s, valid until %s; restart taskd to use it\n",
				b.Paths.NodeCert(), b.Name, b.Leaf.NotAfter.UTC().Format(time.RFC3339))
			return nil
		},
	}
	renew.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	d.register(renew.Flags())
	cmd.AddCommand(renew)
	return cmd
}

func signalNotifyContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
}
