// Package daemon is taskd's command line: flags, TASKD_* environment
// variables and the config file fill one node.Config; signals drive shutdown;
// errors become the exit codes documented in docs/exit-codes.md.
package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/signal"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/taskd/taskd/internal/bootstrap"
	"github.com/taskd/taskd/internal/node"
	"github.com/taskd/taskd/internal/pki"
	"github.com/taskd/taskd/internal/task"
	"github.com/taskd/taskd/internal/tasktype"
	"github.com/taskd/taskd/internal/volcmd"
	"github.com/taskd/taskd/internal/volcopy"
)

// Exit codes. docs/exit-codes.md explains each; keep them in sync.
const (
	ExitOK              = 0  // clean shutdown after SIGTERM/SIGINT
	ExitInternal        = 1  // unexpected internal error (a bug: please report)
	ExitUsage           = 2  // unknown flag or bad argument on the command line
	ExitForced          = 3  // second signal, or shutdown exceeded --shutdown-timeout
	ExitJoinUnavailable = 69 // taskd join: no member could admit the node in time
	ExitCoordinator     = 70 // the embedded etcd server failed fatally
	ExitAddrInUse       = 71 // a listen address (API or embedded etcd) is held by another process
	ExitDataDir         = 73 // data directory unusable or locked by another taskd
	ExitJoinRefused     = 77 // taskd join: credential refused, or the server is not the token's cluster
	ExitConfig          = 78 // configuration error (also: node name taken by another node)
)

// Version is set at build time with -ldflags.
var Version = "dev"

type usageError struct{ error }

// extraTypes are the task types a program built on the public SDK adds
// (MainWith); every command that runs the daemon registers them.
var extraTypes task.Registry

// Main runs taskd with args and returns the exit code.
func Main(args []string) int { return MainWith(args, nil) }

// MainWith is Main for a taskd built with more task types (package sdk).
func MainWith(args []string, types task.Registry) int {
	if len(args) > 0 && args[0] == tasktype.GuardArg {
		// taskd watching one of its exec programs (tasktype.GuardArg).
		return tasktype.GuardMain(args[1:], os.Stdin, os.Stdout)
	}
	extraTypes = types
	cmd := newRootCmd()
	cmd.SetArgs(args)
	err := cmd.Execute()
	code := exitCode(err)
	if err != nil {
		fmt.Fprintf(os.Stderr, "taskd: %v (exit %d)\n", err, code)
	}
	return code
}

func exitCode(err error) int {
	var ue usageError
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &ue):
		return ExitUsage
	case errors.Is(err, errForced):
		return ExitForced
	case errors.As(err, new(volcmd.UsageError)):
		return ExitUsage
	case errors.Is(err, volcmd.ErrInterrupted):
		return volcmd.ExitCopyInterrupted
	case errors.Is(err, volcopy.ErrVerify):
		return volcmd.ExitCopyVerify
	case errors.Is(err, bootstrap.ErrUnauthenticated), errors.Is(err, bootstrap.ErrRefused):
		return ExitJoinRefused
	case errors.Is(err, bootstrap.ErrInvalid), errors.Is(err, pki.ErrBadJoinToken), errors.Is(err, pki.ErrInsecureFile):
		return ExitConfig
	case errors.Is(err, bootstrap.ErrUnavailable):
		return ExitJoinUnavailable
	case errors.Is(err, node.ErrAddrInUse):
		return ExitAddrInUse
	case errors.Is(err, node.ErrConfig):
		return ExitConfig
	case errors.Is(err, node.ErrDataDir):
		return ExitDataDir
	case errors.Is(err, node.ErrCoordinatorFailed):
		return ExitCoordinator
	}
	return ExitInternal
}

var errForced = errors.New("forced exit")

// newVolumeCmd is `taskd volume`: the local copy command, shared with
// taskd-copy (package volcmd).
func newVolumeCmd() *cobra.Command {
	vol := &cobra.Command{Use: "volume", Short: "Local volume commands that run in this process"}
	vol.AddCommand(volcmd.NewCopyCmd("copy SRC DST"))
	return vol
}

func newRootCmd() *cobra.Command {
	d := newDaemonFlags()
	cmd := &cobra.Command{
		Use:           "taskd",
		Short:         "taskd: distributed task service daemon",
		Long:          "taskd joins the cluster on its coordination store, takes part in the leader election and serves the API.\nOn a data directory without credentials it creates a new cluster (as `taskd init` does).\nEvery flag can also be set as TASKD_<FLAG> (e.g. TASKD_SESSION_TIMEOUT=6s) or in the --config file.",
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       Version,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := d.prepare(cmd)
			if err != nil {
				return err
			}
			if err := autoInit(d, log); err != nil {
				return err
			}
			return run(d.cfg, log)
		},
	}
	cmd.RunE = withSources(d, cmd.RunE)
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	d.register(cmd.Flags())
	cmd.AddCommand(newVolumeCmd(), newInitCmd(), newJoinCmd(), newCertCmd())
	argsAreUsage(cmd)
	return cmd
}

// argsAreUsage makes a wrong argument on c or any subcommand (an unknown
// command such as `taskd bogus`, an argument to a command that takes none)
// a usage error, exit 2, which systemd does not restart; cobra's own error
// was exit 1.
func argsAreUsage(c *cobra.Command) {
	for _, sub := range c.Commands() {
		argsAreUsage(sub)
	}
	args := c.Args
	if args == nil {
		return
	}
	c.Args = func(cmd *cobra.Command, a []string) error {
		err := args(cmd, a)
		var ue usageError
		if err == nil || errors.As(err, &ue) {
			return err
		}
		return usageError{fmt.Errorf("%w (see %s --help)", err, cmd.CommandPath())}
	}
}

// daemonFlags are the flags of every command that runs the daemon (taskd,
// taskd init, taskd join) or works on its data directory (taskd cert).
type daemonFlags struct {
	cfg                             node.Config
	configFile, logLevel, logFormat string
	certHostsFlag                   []string
	// sources names where each flag not given on the command line got
	// its value ("environment variable TASKD_X", "TASKD_X in FILE").
	sources map[string]string
}

// withSources makes the errors of run name the environment variable or
// config file line a bad value came from, next to its flag: an operator
// who set TASKD_PRIORITY=300 is not left looking for a --priority flag.
func withSources(d *daemonFlags, run func(*cobra.Command, []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		return d.annotate(run(cmd, args))
	}
}

// sourcedError is an error whose message names the sources of flags.
type sourcedError struct {
	msg string
	err error
}

func (e sourcedError) Error() string { return e.msg }
func (e sourcedError) Unwrap() error { return e.err }

// annotate adds "(from environment variable TASKD_X)" after each --x in
// err's message whose value did not come from the command line.
func (d *daemonFlags) annotate(err error) error {
	if err == nil || len(d.sources) == 0 {
		return err
	}
	msg := err.Error()
	names := slices.Sorted(maps.Keys(d.sources))
	slices.Reverse(names) // longer names that extend shorter ones first (--etcd-ca-x before --etcd-ca)
	changed := false
	for _, name := range names {
		re := regexp.MustCompile(`--` + regexp.QuoteMeta(name) + `\b([^-]|$)`)
		if re.MatchString(msg) {
			msg = re.ReplaceAllStringFunc(msg, func(m string) string {
				return "--" + name + " (from " + d.sources[name] + ")" + m[len("--"+name):]
			})
			changed = true
		}
	}
	if !changed {
		return err
	}
	return sourcedError{msg, err}
}

func newDaemonFlags() *daemonFlags {
	cfg := node.DefaultConfig()
	cfg.ExtraTypes = extraTypes
	return &daemonFlags{cfg: cfg}
}

// prepare fills the flags from the environment, the config file and
// DATA_DIR/cluster.json (in that order of precedence, after the command
// line) and builds the logger.
func (d *daemonFlags) prepare(cmd *cobra.Command) (*slog.Logger, error) {
	given := map[string]bool{}
	cmd.Flags().Visit(func(f *pflag.Flag) { given[f.Name] = true })
	if err := applyEnvAndFile(cmd.Flags(), d.configFile); err != nil {
		return nil, err
	}
	d.sources = map[string]string{}
	cmd.Flags().Visit(func(f *pflag.Flag) {
		if given[f.Name] {
			return
		}
		env := envName(f.Name)
		if _, ok := os.LookupEnv(env); ok {
			d.sources[f.Name] = "environment variable " + env
		} else {
			d.sources[f.Name] = env + " in " + d.configFile
		}
	})
	if err := refuseRemoved(cmd.Flags()); err != nil {
		return nil, err
	}
	if err := applyClusterFile(cmd.Flags(), d.cfg.DataDir); err != nil {
		return nil, err
	}
	log, err := newLogger(os.Stderr, d.logLevel, d.logFormat)
	if err != nil {
		return nil, usageError{err}
	}
	d.cfg.Version = Version
	return log, nil
}

func (d *daemonFlags) register(f *pflag.FlagSet) {
	cfg := &d.cfg
	f.StringVar(&d.configFile, "config", "", "config file of TASKD_NAME=value lines (same names as the environment variables)")
	f.StringVar(&cfg.Name, "name", cfg.Name, "unique node name, the host name unless given; it names the node's certificate")
	f.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "data directory (lock, node id, credentials in pki/, embedded etcd data)")
	f.StringVar(&cfg.Listen, "listen", cfg.Listen, "API listen address (always TLS with the node certificate; every call needs a token)")
	f.StringVar(&cfg.Advertise, "advertise", cfg.Advertise, "API address announced to the cluster (default: --listen)")
	f.StringVar(&cfg.Coordinator, "coordinator", cfg.Coordinator, `coordination store: "embedded", "etcds://host:port,...", "zks://host:port,.../chroot" (zk:// and, to loopback only, etcd:// without TLS)`)
	f.DurationVar(&cfg.SessionTimeout, "session-timeout", cfg.SessionTimeout, "coordination session timeout")
	f.Float64Var(&cfg.DeadlineFraction, "deadline-fraction", cfg.DeadlineFraction, "local deadline as a fraction of the session timeout; the node fences when it passes")
	f.DurationVar(&cfg.YieldGrace, "yield-grace", cfg.YieldGrace, "how long a higher-priority member must be stable before the leader yields to it")
	f.IntVar(&cfg.Priority, "priority", cfg.Priority, "election priority 0-255, higher wins (a priority set with taskctl takes precedence)")
	// Removed settings, kept only to explain what replaced them (a config
	// file that still sets one must not start an unprotected node nor fail
	// with a bare "unknown flag").
	for _, name := range removedFlags {
		f.String(name, "", "removed; see docs/security.md")
		_ = f.MarkHidden(name)
	}
	f.StringArrayVar(&cfg.VIPs, "vip", nil, "virtual IP to create in the store if its service has none, SERVICE=IP[/PREFIX]@INTERFACE (repeatable), e.g. iscsi=10.0.0.50@eth0; afterwards taskctl vip manages it")
	f.StringArrayVar(&cfg.VIPAllowInterfaces, "vip-allow-interface", nil, "interface this node may hold VIPs on (repeatable); none: any but loopback. Give every node the same list")
	f.StringArrayVar(&cfg.VIPAllowCIDRs, "vip-allow-cidr", nil, "IPv4 network a VIP held by this node must lie in, e.g. 10.0.0.0/24 (repeatable); none: any. Give every node the same list")
	f.StringArrayVar(&cfg.HealthTargets, "health-target", nil, "IPv4 address probed with ICMP echo to judge the access network, e.g. the gateway and peers (repeatable); none: always healthy")
	f.DurationVar(&cfg.HealthInterval, "health-interval", cfg.HealthInterval, "time between access-network probe rounds")
	f.DurationVar(&cfg.HealthTimeout, "health-timeout", cfg.HealthTimeout, "how long a probe round waits for replies")
	f.IntVar(&cfg.HealthRise, "health-rise", cfg.HealthRise, "passed rounds in a row before an unhealthy node is healthy again")
	f.IntVar(&cfg.HealthFall, "health-fall", cfg.HealthFall, "failed rounds in a row before a healthy node is unhealthy")
	f.StringVar(&cfg.ClockOffsetFile, "clock-offset-file", "", "fault injection for tests: a file holding a duration added to the task center's wall clock, re-read on SIGUSR2")
	_ = f.MarkHidden("clock-offset-file")
	f.IntVar(&cfg.RunnerCapacity, "runner-capacity", cfg.RunnerCapacity, "most tasks this node runs at once")
	f.BoolVar(&cfg.RunnerBatchWrites, "runner-batch-writes", cfg.RunnerBatchWrites, "join the running tasks' concurrent checkpoint and progress writes into one store transaction (each keeps its own conditions)")
	f.StringArrayVar(&cfg.RunnerTypeCapacity, "runner-type-capacity", nil, "most tasks of one type this node runs at once, TYPE=N (repeatable), e.g. copy=2")
	f.StringArrayVar(&cfg.VolumeRoots, "volume-root", nil, "directory under which copy tasks may use file:// endpoints (repeatable); none: file endpoints are refused")
	f.StringVar(&cfg.ExecDir, "exec-dir", "", "directory of exec task type programs, one executable per type name, owned by root and writable by no one else (docs/task-types.md)")
	f.StringArrayVar(&cfg.NBDSocketDirs, "nbd-socket-dir", nil, "directory under which copy tasks may use nbd+unix sockets (repeatable); none: nbd+unix endpoints are refused")
	f.StringArrayVar(&cfg.NBDAllowHosts, "nbd-allow-host", nil, "host name, IP address or CIDR prefix copy tasks may reach with nbd:// (repeatable); none: nbd:// endpoints are refused")
	f.StringVar(&cfg.CopyMemoryLimit, "copy-memory-limit", cfg.CopyMemoryLimit, "buffer memory all copy tasks of this node may hold at once; a copy waits for its share")
	f.DurationVar(&cfg.TaskRetention, "task-retention", cfg.TaskRetention, "how long finished tasks are kept before the leader deletes them")
	f.StringVar(&cfg.TimeZone, "time-zone", cfg.TimeZone, "IANA time zone of run windows created without one; every node should use the same")
	f.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", cfg.ShutdownTimeout, "after the first SIGTERM, exit forcibly (code 3) if shutdown takes longer")
	f.StringVar(&cfg.EtcdClientURL, "etcd-client-url", cfg.EtcdClientURL, "embedded etcd: client URL (https only; client certificates of the cluster CA required)")
	f.StringVar(&cfg.EtcdPeerURL, "etcd-peer-url", cfg.EtcdPeerURL, "embedded etcd: peer URL (https only; mutual TLS between members)")
	f.StringVar(&cfg.EtcdInitialCluster, "etcd-initial-cluster", cfg.EtcdInitialCluster, "embedded etcd: name=https://peer,... of the initial members (default: this node alone, or what taskd join wrote to cluster.json)")
	f.StringVar(&cfg.EtcdClusterState, "etcd-cluster-state", cfg.EtcdClusterState, `embedded etcd: "new" or "existing"`)
	f.StringVar(&cfg.EtcdLogLevel, "etcd-log-level", cfg.EtcdLogLevel, "embedded etcd: log level (debug, info, warn, error)")
	f.StringVar(&cfg.EtcdCA, "etcd-ca", "", "external etcd (etcds://): CA certificate (PEM) that signed the etcd servers' certificates (default: the cluster CA)")
	f.StringVar(&cfg.EtcdCert, "etcd-cert", "", "external etcd (etcds://): client certificate (PEM) to present (default: the node certificate)")
	f.StringVar(&cfg.EtcdKey, "etcd-key", "", "external etcd (etcds://): private key (PEM, mode 0600) of --etcd-cert")
	f.StringVar(&cfg.EtcdUser, "etcd-user", "", "external etcd: user name (with --etcd-password-file); required for plaintext etcd:// on loopback")
	f.StringVar(&cfg.EtcdPasswordFile, "etcd-password-file", "", "external etcd: file (mode 0600) holding the password of --etcd-user")
	f.StringVar(&cfg.ZKCA, "zk-ca", "", "ZooKeeper over TLS (zks://): CA certificate (PEM) that signed the servers' certificates (default: the cluster CA)")
	f.StringArrayVar(&d.certHostsFlag, "cert-host", nil, "extra host name or address for this node's certificate when it is made (init, join, cert renew; repeatable): every address the node's etcd peers and clients connect from")
	f.StringVar(&d.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	f.StringVar(&d.logFormat, "log-format", "text", "log format: text or json")
}

// removedFlags were the API's single shared token and optional TLS. The
// API now always serves TLS with the node certificate (DATA_DIR/pki) and
// checks tokens kept in the store, with roles; the node's own admin token
// is DATA_DIR/admin.token.
var removedFlags = []string{"token-file", "tls-cert", "tls-key"}

func refuseRemoved(fs *pflag.FlagSet) error {
	var errs []error
	for _, name := range removedFlags {
		if f := fs.Lookup(name); f != nil && f.Value.String() != "" {
			errs = append(errs, fmt.Errorf("--%s (%s) was removed: the API always serves TLS with the node certificate in DATA_DIR/pki, "+
				"and API tokens are kept in the store with roles (taskctl token create); the node's admin token is DATA_DIR/admin.token. "+
				"Remove the setting; see docs/security.md", name, envName(name)))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", node.ErrConfig, err)
	}
	return nil
}

// envName maps a flag name to its environment variable.
func envName(flag string) string {
	return "TASKD_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// applyEnvAndFile fills flags not given on the command line from the
// environment, then from the config file. Unknown names in the file are
// errors, so a typo never goes unnoticed.
func applyEnvAndFile(fs *pflag.FlagSet, file string) error {
	fileVals := map[string]string{}
	if file != "" {
		vals, err := readConfigFile(file)
		if err != nil {
			return fmt.Errorf("%w: %w", node.ErrConfig, err)
		}
		fileVals = vals
	}
	known := map[string]bool{}
	var errs []error
	fs.VisitAll(func(f *pflag.Flag) {
		env := envName(f.Name)
		known[env] = true
		if f.Changed || f.Name == "config" {
			return
		}
		v, ok := os.LookupEnv(env)
		src := "environment variable " + env
		if !ok {
			v, ok = fileVals[env]
			src = fmt.Sprintf("%s in %s", env, file)
		}
		if ok {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", src, v, err))
			}
		}
	})
	for k := range fileVals {
		if !known[k] {
			errs = append(errs, fmt.Errorf("%s: unknown setting %s", file, k))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", node.ErrConfig, err)
	}
	return nil
}

func readConfigFile(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		k, v, ok := strings.Cut(text, "=")
		if !ok {
			return nil, fmt.Errorf("%s:%d: want TASKD_NAME=value", path, line)
		}
		out[strings.TrimSpace(k)] = strings.Trim(strings.TrimSpace(v), `"`)
	}
	return out, sc.Err()
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: use text or json", format)
}

// run starts the node and handles signals: the first SIGTERM/SIGINT starts a
// graceful shutdown (resign, deregister); a second one, or the shutdown
// timeout, forces the exit.
func run(cfg node.Config, log *slog.Logger) (err error) {
	defer func() {
		// The next start reads this back. Not for configuration or data
		// directory errors: the directory may belong to another taskd.
		if errors.Is(err, node.ErrConfig) || errors.Is(err, node.ErrDataDir) {
			return
		}
		reason := "clean shutdown"
		if err != nil {
			reason = err.Error()
		}
		if werr := node.RecordExit(cfg.DataDir, exitCode(err), reason); werr != nil {
			log.Warn("cannot record the exit code for the next start", "err", werr)
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)

	done := make(chan error, 1)
	go func() { done <- node.Run(ctx, cfg, log) }()
	select {
	case err := <-done:
		return err
	case sig := <-sigs:
		log.Info("shutdown requested", "signal", sig.String(), "timeout", cfg.ShutdownTimeout)
		cancel()
	}
	timer := time.NewTimer(cfg.ShutdownTimeout)
	defer timer.Stop()
	select {
	case err := <-done:
		return err
	case sig := <-sigs:
		log.Error("second signal: forcing exit", "signal", sig.String())
		return fmt.Errorf("%w: second signal %s during shutdown", errForced, sig)
	case <-timer.C:
		log.Error("shutdown timed out: forcing exit", "timeout", cfg.ShutdownTimeout)
		return fmt.Errorf("%w: shutdown exceeded %v", errForced, cfg.ShutdownTimeout)
	}
}
