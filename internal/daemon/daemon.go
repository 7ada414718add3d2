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
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/taskd/taskd/internal/node"
	"github.com/taskd/taskd/internal/volcmd"
	"github.com/taskd/taskd/internal/volcopy"
)

// Exit codes. docs/exit-codes.md explains each; keep them in sync.
const (
	ExitOK          = 0  // clean shutdown after SIGTERM/SIGINT
	ExitInternal    = 1  // unexpected internal error (a bug: please report)
	ExitUsage       = 2  // unknown flag or bad argument on the command line
	ExitForced      = 3  // second signal, or shutdown exceeded --shutdown-timeout
	ExitCoordinator = 70 // the embedded etcd server failed fatally
	ExitDataDir     = 73 // data directory unusable or locked by another taskd
	ExitConfig      = 78 // configuration error (also: node name taken by another node)
)

// Version is set at build time with -ldflags.
var Version = "dev"

type usageError struct{ error }

// Main runs taskd with args and returns the exit code.
func Main(args []string) int {
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

func newRootCmd() *cobra.Command {
	cfg := node.DefaultConfig()
	var configFile, logLevel, logFormat string
	cmd := &cobra.Command{
		Use:           "taskd",
		Short:         "taskd: distributed task service daemon",
		Long:          "taskd joins the cluster on its coordination store, takes part in the leader election and serves the API.\nEvery flag can also be set as TASKD_<FLAG> (e.g. TASKD_SESSION_TIMEOUT=6s) or in the --config file.",
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       Version,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyEnvAndFile(cmd.Flags(), configFile); err != nil {
				return err
			}
			log, err := newLogger(os.Stderr, logLevel, logFormat)
			if err != nil {
				return usageError{err}
			}
			cfg.Version = Version
			return run(cfg, log)
		},
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	f := cmd.Flags()
	f.StringVar(&configFile, "config", "", "config file of TASKD_NAME=value lines (same names as the environment variables)")
	f.StringVar(&cfg.Name, "name", cfg.Name, "unique node name (default: hostname)")
	f.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "data directory (lock, node id, embedded etcd data)")
	f.StringVar(&cfg.Listen, "listen", cfg.Listen, "API listen address; a non-loopback address requires --token-file")
	f.StringVar(&cfg.Advertise, "advertise", cfg.Advertise, "API address announced to the cluster (default: --listen)")
	f.StringVar(&cfg.Coordinator, "coordinator", cfg.Coordinator, `coordination store: "embedded", "etcd://host:port,...", "zk://host:port,.../chroot"`)
	f.DurationVar(&cfg.SessionTimeout, "session-timeout", cfg.SessionTimeout, "coordination session timeout")
	f.Float64Var(&cfg.DeadlineFraction, "deadline-fraction", cfg.DeadlineFraction, "local deadline as a fraction of the session timeout; the node fences when it passes")
	f.DurationVar(&cfg.YieldGrace, "yield-grace", cfg.YieldGrace, "how long a higher-priority member must be stable before the leader yields to it")
	f.IntVar(&cfg.Priority, "priority", cfg.Priority, "election priority 0-255, higher wins (a priority set with taskctl takes precedence)")
	f.StringVar(&cfg.TokenFile, "token-file", cfg.TokenFile, "file holding the API bearer token")
	f.StringVar(&cfg.TLSCert, "tls-cert", cfg.TLSCert, "TLS certificate (PEM) for the API")
	f.StringVar(&cfg.TLSKey, "tls-key", cfg.TLSKey, "TLS private key (PEM) for the API")
	f.StringArrayVar(&cfg.VIPs, "vip", nil, "virtual IP to create in the store if its service has none, SERVICE=IP[/PREFIX]@INTERFACE (repeatable), e.g. iscsi=10.0.0.50@eth0; afterwards taskctl vip manages it")
	f.StringArrayVar(&cfg.HealthTargets, "health-target", nil, "IPv4 address probed with ICMP echo to judge the access network, e.g. the gateway and peers (repeatable); none: always healthy")
	f.DurationVar(&cfg.HealthInterval, "health-interval", cfg.HealthInterval, "time between access-network probe rounds")
	f.DurationVar(&cfg.HealthTimeout, "health-timeout", cfg.HealthTimeout, "how long a probe round waits for replies")
	f.IntVar(&cfg.HealthRise, "health-rise", cfg.HealthRise, "passed rounds in a row before an unhealthy node is healthy again")
	f.IntVar(&cfg.HealthFall, "health-fall", cfg.HealthFall, "failed rounds in a row before a healthy node is unhealthy")
	f.StringVar(&cfg.ClockOffsetFile, "clock-offset-file", "", "fault injection for tests: a file holding a duration added to the task center's wall clock, re-read on SIGUSR2")
	_ = f.MarkHidden("clock-offset-file")
	f.IntVar(&cfg.RunnerCapacity, "runner-capacity", cfg.RunnerCapacity, "most tasks this node runs at once")
	f.StringArrayVar(&cfg.RunnerTypeCapacity, "runner-type-capacity", nil, "most tasks of one type this node runs at once, TYPE=N (repeatable), e.g. copy=2")
	f.StringArrayVar(&cfg.VolumeRoots, "volume-root", nil, "directory under which copy tasks may use file:// endpoints (repeatable); none: file endpoints are refused")
	f.StringArrayVar(&cfg.NBDSocketDirs, "nbd-socket-dir", nil, "directory under which copy tasks may use nbd+unix sockets (repeatable); none: nbd+unix endpoints are refused")
	f.StringArrayVar(&cfg.NBDAllowHosts, "nbd-allow-host", nil, "host name, IP address or CIDR prefix copy tasks may reach with nbd:// (repeatable); none: nbd:// endpoints are refused")
	f.StringVar(&cfg.CopyMemoryLimit, "copy-memory-limit", cfg.CopyMemoryLimit, "buffer memory all copy tasks of this node may hold at once; a copy waits for its share")
	f.DurationVar(&cfg.TaskRetention, "task-retention", cfg.TaskRetention, "how long finished tasks are kept before the leader deletes them")
	f.StringVar(&cfg.TimeZone, "time-zone", cfg.TimeZone, "IANA time zone of run windows created without one; every node should use the same")
	f.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", cfg.ShutdownTimeout, "after the first SIGTERM, exit forcibly (code 3) if shutdown takes longer")
	f.StringVar(&cfg.EtcdClientURL, "etcd-client-url", cfg.EtcdClientURL, "embedded etcd: client URL")
	f.StringVar(&cfg.EtcdPeerURL, "etcd-peer-url", cfg.EtcdPeerURL, "embedded etcd: peer URL")
	f.StringVar(&cfg.EtcdInitialCluster, "etcd-initial-cluster", cfg.EtcdInitialCluster, "embedded etcd: name=peerURL,... of the initial members (default: this node alone)")
	f.StringVar(&cfg.EtcdClusterState, "etcd-cluster-state", cfg.EtcdClusterState, `embedded etcd: "new" or "existing"`)
	f.StringVar(&cfg.EtcdLogLevel, "etcd-log-level", cfg.EtcdLogLevel, "embedded etcd: log level (debug, info, warn, error)")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	f.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	vol := &cobra.Command{Use: "volume", Short: "Local volume commands that run in this process"}
	vol.AddCommand(volcmd.NewCopyCmd("copy SRC DST"))
	cmd.AddCommand(vol)
	return cmd
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
