package node

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/dispatch"
	"github.com/taskd/taskd/internal/health"
	"github.com/taskd/taskd/internal/keys"
	"github.com/taskd/taskd/internal/metrics"
	"github.com/taskd/taskd/internal/quorum"
	"github.com/taskd/taskd/internal/runner"
	"github.com/taskd/taskd/internal/task"
	"github.com/taskd/taskd/internal/tasktype"
	"github.com/taskd/taskd/internal/vipaddr"
	"github.com/taskd/taskd/internal/volcopy"
	"github.com/taskd/taskd/internal/volume"
)

// Config is everything a taskd node is started with. Flags, TASKD_*
// environment variables and the config file fill it (cmd/taskd).
type Config struct {
	Name    string
	DataDir string
	// Root is the cluster's directory in the coordination store (the
	// quorum's, and every record's under it). Not a flag: every member
	// must use the same.
	Root             string
	Listen           string
	Advertise        string
	Coordinator      string
	SessionTimeout   time.Duration
	DeadlineFraction float64
	YieldGrace       time.Duration
	Priority         int
	ShutdownTimeout  time.Duration
	// VIPs seeded into the store when absent, as
	// SERVICE=IP[/PREFIX]@INTERFACE.
	VIPs []string
	// VIP allowlists of this node: interfaces (--vip-allow-interface)
	// and IPv4 networks (--vip-allow-cidr); empty allows any.
	VIPAllowInterfaces []string
	VIPAllowCIDRs      []string
	// Access-network health probes (ICMP echo).
	HealthTargets  []string
	HealthInterval time.Duration
	HealthTimeout  time.Duration
	HealthRise     int
	HealthFall     int
	// ClockOffsetFile: fault injection (hidden flag). See internal/chaos/clockhook.
	ClockOffsetFile string

	// Tasks.
	RunnerCapacity     int
	RunnerBatchWrites  bool
	RunnerTypeCapacity []string // TYPE=N
	TaskRetention      time.Duration
	TimeZone           string // default zone of run windows
	// VolumeRoots confine the file:// endpoints of copy tasks.
	VolumeRoots []string
	// ExecDir holds the programs of exec task types, one per type name
	// (docs/task-types.md); empty: none.
	ExecDir string
	// ExtraTypes are Go task types of a taskd built with the public SDK.
	ExtraTypes task.Registry
	// NBDSocketDirs confine the nbd+unix sockets of copy tasks, and
	// NBDAllowHosts their nbd:// hosts (names, addresses, CIDR prefixes).
	NBDSocketDirs []string
	NBDAllowHosts []string
	// CopyMemoryLimit bounds the buffer memory of all copy tasks of the
	// node together, e.g. "1G".
	CopyMemoryLimit string

	// Embedded etcd (--coordinator embedded).
	EtcdClientURL      string
	EtcdPeerURL        string
	EtcdInitialCluster string
	EtcdClusterState   string
	EtcdLogLevel       string

	// External etcd (--coordinator etcds:// or etcd://): CA and client
	// certificate (default: the cluster CA and the node certificate), and
	// a user with a password read from a file.
	EtcdCA           string
	EtcdCert         string
	EtcdKey          string
	EtcdUser         string
	EtcdPasswordFile string
	// ZKCA verifies a zks:// ensemble (default: the cluster CA).
	ZKCA string

	Version string
}

// DefaultConfig returns the defaults documented in docs/configuration.md.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	q := quorum.DefaultConfig()
	return Config{
		Name:             host,
		DataDir:          "/var/lib/taskd",
		Root:             q.Root,
		Listen:           "127.0.0.1:10600",
		Coordinator:      "embedded",
		SessionTimeout:   q.SessionTimeout,
		DeadlineFraction: q.DeadlineFraction,
		YieldGrace:       q.YieldGrace,
		Priority:         q.Priority,
		ShutdownTimeout:  10 * time.Second,
		RunnerCapacity:   runner.DefaultConfig().Capacity,
		TaskRetention:    dispatch.DefaultConfig().Retention,
		TimeZone:         "UTC",
		CopyMemoryLimit:  "1G",
		HealthInterval:   health.DefaultConfig().Interval,
		HealthTimeout:    health.DefaultConfig().Timeout,
		HealthRise:       health.DefaultConfig().Rise,
		HealthFall:       health.DefaultConfig().Fall,
		EtcdClientURL:    "https://127.0.0.1:10601",
		EtcdPeerURL:      "https://127.0.0.1:10602",
		EtcdClusterState: "new",
		EtcdLogLevel:     "error",
	}
}

// ErrConfig marks configuration errors; taskd exits with code 78 for them
// and systemd does not restart it (RestartPreventExitStatus=78).
var ErrConfig = errors.New("configuration error")

// Validate checks every field and the relations between them without
// touching the disk; credentials are read at start.
func (c Config) Validate() error {
	var errs []error
	if err := keys.ValidName(c.Name); err != nil {
		errs = append(errs, fmt.Errorf("--name: %w", err))
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("--data-dir is empty"))
	}
	if err := keys.ValidRoot(c.Root); err != nil {
		errs = append(errs, fmt.Errorf("store root: %w", err))
	}
	if t, err := coord.ParseTarget(c.Coordinator); err != nil {
		errs = append(errs, fmt.Errorf("--coordinator: %w", err))
	} else {
		errs = append(errs, c.validateStore(t)...)
	}
	qc := c.quorumConfig("validate")
	if err := quorum.ValidatePriority(c.Priority); err != nil {
		errs = append(errs, fmt.Errorf("--priority: %w", err))
		qc.Priority = 0 // said once, with its flag; not again by qc.Validate
	}
	if err := qc.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.ShutdownTimeout <= 0 {
		errs = append(errs, fmt.Errorf("--shutdown-timeout %v must be positive", c.ShutdownTimeout))
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		errs = append(errs, fmt.Errorf("--listen %q: %w", c.Listen, err))
	}
	if _, err := c.vipSpecs(); err != nil {
		errs = append(errs, err)
	}
	if _, err := c.runnerConfig(); err != nil {
		errs = append(errs, err)
	}
	if _, err := c.healthConfig(); err != nil {
		errs = append(errs, err)
	}
	for _, r := range c.VolumeRoots {
		if !filepath.IsAbs(r) {
			errs = append(errs, fmt.Errorf("--volume-root %q must be an absolute path", r))
		}
	}
	if err := c.checkExtraTypes(); err != nil {
		errs = append(errs, err)
	}
	if c.ExecDir != "" && !filepath.IsAbs(c.ExecDir) {
		errs = append(errs, fmt.Errorf("--exec-dir %q must be an absolute path", c.ExecDir))
	} else if c.ExecDir != "" {
		if err := tasktype.CheckExecDir(c.ExecDir); err != nil {
			errs = append(errs, err)
		}
	}
	for _, d := range c.NBDSocketDirs {
		if !filepath.IsAbs(d) {
			errs = append(errs, fmt.Errorf("--nbd-socket-dir %q must be an absolute path", d))
		}
	}
	if err := volume.ParseAllowHosts(c.NBDAllowHosts); err != nil {
		errs = append(errs, err)
	}
	if _, err := c.copyMemoryLimit(); err != nil {
		errs = append(errs, err)
	}
	if c.TaskRetention <= 0 {
		errs = append(errs, fmt.Errorf("--task-retention %v must be positive", c.TaskRetention))
	}
	if _, err := time.LoadLocation(c.TimeZone); err != nil || c.TimeZone == "" || c.TimeZone == "Local" {
		errs = append(errs, fmt.Errorf("--time-zone %q: use an IANA zone name such as UTC or Europe/Berlin", c.TimeZone))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	return nil
}

// copyMemoryLimit parses --copy-memory-limit.
func (c Config) copyMemoryLimit() (int64, error) {
	n, err := volcopy.ParseBytes(c.CopyMemoryLimit)
	if err != nil || n < 1<<20 {
		return 0, fmt.Errorf("--copy-memory-limit %q: want a byte count of at least 1M, e.g. 1G", c.CopyMemoryLimit)
	}
	return n, nil
}

// copyType is the copy task type with this node's confinement and memory
// pool.
// taskTypes is the registry of this node: the built-in types and the
// exec types of ExecDir.
func (c Config) taskTypes(log *slog.Logger, m *metrics.Set) (task.Registry, error) {
	types := tasktype.Builtin(c.copyType(), log, m)
	if err := c.checkExtraTypes(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	maps.Copy(types, c.ExtraTypes)
	extra, err := tasktype.ExecTypes(c.ExecDir, types, log)
	if err != nil {
		return nil, err
	}
	maps.Copy(types, extra)
	return types, nil
}

// checkExtraTypes refuses SDK types with bad names or a built-in's name.
func (c Config) checkExtraTypes() error {
	builtin := tasktype.Builtin(tasktype.Copy{}, nil, nil)
	for _, name := range c.ExtraTypes.Names() {
		if _, ok := builtin[name]; ok {
			return fmt.Errorf("task type %q is built in", name)
		}
		if err := keys.ValidTaskType(name); err != nil {
			return err
		}
	}
	return nil
}

func (c Config) copyType() tasktype.Copy {
	limit, _ := c.copyMemoryLimit() // validated in Run
	return tasktype.Copy{Roots: c.VolumeRoots, NBDSocketDirs: c.NBDSocketDirs, NBDAllowHosts: c.NBDAllowHosts,
		Memory: volcopy.NewMemoryPool(limit)}
}

// vipSpecs parses --vip; services and addresses must be unique.
// vipPolicy builds this node's VIP allowlist from --vip-allow-interface
// and --vip-allow-cidr.
func (c Config) vipPolicy() (vipaddr.Policy, error) {
	cidrs, err := vipaddr.ParseCIDRs(c.VIPAllowCIDRs)
	if err != nil {
		return vipaddr.Policy{}, fmt.Errorf("--vip-allow-cidr: %w", err)
	}
	p := vipaddr.Policy{Interfaces: c.VIPAllowInterfaces, CIDRs: cidrs}
	if err := p.Validate(); err != nil {
		return vipaddr.Policy{}, fmt.Errorf("--vip-allow-interface/--vip-allow-cidr: %w", err)
	}
	return p, nil
}

// vipSpecs parses --vip; services and addresses must be unique, and this
// node's own allowlist must allow each.
func (c Config) vipSpecs() ([]vipaddr.Spec, error) {
	policy, err := c.vipPolicy()
	if err != nil {
		return nil, err
	}
	var out []vipaddr.Spec
	for _, v := range c.VIPs {
		s, err := vipaddr.ParseSpec(v)
		if err != nil {
			return nil, fmt.Errorf("--vip: %w", err)
		}
		if err := policy.Check(s); err != nil {
			return nil, fmt.Errorf("--vip %q: %w", v, err)
		}
		for _, o := range out {
			if o.Service == s.Service || o.Prefix.Addr() == s.Prefix.Addr() {
				return nil, fmt.Errorf("--vip %q: service or address given twice", v)
			}
		}
		out = append(out, s)
	}
	return out, nil
}

// healthConfig builds the access-network probe schedule from the flags.
func (c Config) healthConfig() (health.Config, error) {
	h := health.Config{Interval: c.HealthInterval, Timeout: c.HealthTimeout, Rise: c.HealthRise, Fall: c.HealthFall}
	for _, t := range c.HealthTargets {
		a, err := netip.ParseAddr(t)
		if err != nil {
			return h, fmt.Errorf("--health-target %q: not an IP address", t)
		}
		h.Targets = append(h.Targets, a)
	}
	if err := h.Validate(); err != nil {
		return h, fmt.Errorf("--health-*: %w", err)
	}
	return h, nil
}

// runnerConfig builds the runner's settings from the flags.
func (c Config) runnerConfig() (runner.Config, error) {
	rc := runner.DefaultConfig()
	rc.Node, rc.Capacity, rc.Deadline = c.Name, c.RunnerCapacity, c.quorumConfig("").DeadlineOf
	rc.BatchWrites = c.RunnerBatchWrites
	for _, tc := range c.RunnerTypeCapacity {
		typ, n, ok := strings.Cut(tc, "=")
		v, err := strconv.Atoi(n)
		if !ok || typ == "" || err != nil {
			return rc, fmt.Errorf("--runner-type-capacity %q: want TYPE=N, e.g. copy=2", tc)
		}
		if rc.TypeCapacity == nil {
			rc.TypeCapacity = map[string]int{}
		}
		rc.TypeCapacity[typ] = v
	}
	if err := rc.Validate(); err != nil {
		return rc, fmt.Errorf("--runner-capacity: %w", err)
	}
	return rc, nil
}

func (c Config) advertise() string {
	if c.Advertise != "" {
		return c.Advertise
	}
	return c.Listen
}

func (c Config) quorumConfig(nodeID string) quorum.Config {
	q := quorum.DefaultConfig()
	q.Name, q.NodeID, q.Address, q.Version, q.Root = c.Name, nodeID, c.advertise(), c.Version, c.Root
	q.Priority, q.SessionTimeout, q.DeadlineFraction, q.YieldGrace = c.Priority, c.SessionTimeout, c.DeadlineFraction, c.YieldGrace
	return q
}

// validateStore checks the store settings: TLS URLs for the embedded etcd,
// and for an external etcd TLS off loopback and credentials either way.
func (c Config) validateStore(t coord.Target) []error {
	var errs []error
	if t.Kind == coord.KindEmbedded {
		for _, u := range []struct{ flag, v string }{{"--etcd-client-url", c.EtcdClientURL}, {"--etcd-peer-url", c.EtcdPeerURL}} {
			if !strings.HasPrefix(u.v, "https://") {
				errs = append(errs, fmt.Errorf("%s %q: the embedded etcd serves TLS only; use https://host:port", u.flag, u.v))
			}
		}
		for _, m := range strings.Split(c.EtcdInitialCluster, ",") {
			if _, u, ok := strings.Cut(m, "="); ok && !strings.HasPrefix(u, "https://") {
				errs = append(errs, fmt.Errorf("--etcd-initial-cluster entry %q: peers speak TLS only; use https://", m))
			}
		}
	}
	if (c.EtcdUser == "") != (c.EtcdPasswordFile == "") {
		errs = append(errs, errors.New("--etcd-user and --etcd-password-file go together"))
	}
	if (c.EtcdCert == "") != (c.EtcdKey == "") {
		errs = append(errs, errors.New("--etcd-cert and --etcd-key go together"))
	}
	if t.Kind == coord.KindEtcd && !t.TLS {
		if !t.Loopback() {
			errs = append(errs, fmt.Errorf("--coordinator %s: plaintext etcd:// is only allowed to loopback endpoints; use etcds:// with --etcd-ca", t))
		}
		if c.EtcdUser == "" {
			errs = append(errs, fmt.Errorf("--coordinator %s: plaintext etcd:// needs --etcd-user and --etcd-password-file", t))
		}
	}
	return errs
}

// dropReportInterval is how often dropped timeline events are logged (when
// there were any).
const dropReportInterval = time.Minute

// rootWarnings says which --volume-root and --nbd-socket-dir directories
// do not exist (or are no directories) now. Not an error: a mount may
// come later, and until then copies there fail with a clear reason; but
// a typo would otherwise go unnoticed until the first copy.
func (c Config) rootWarnings() []string {
	var out []string
	for _, l := range []struct {
		flag string
		dirs []string
	}{{"--volume-root", c.VolumeRoots}, {"--nbd-socket-dir", c.NBDSocketDirs}} {
		for _, d := range l.dirs {
			fi, err := os.Stat(d)
			switch {
			case err != nil:
				out = append(out, fmt.Sprintf("%s %s: %v; copies there fail until it exists", l.flag, d, errors.Unwrap(err)))
			case !fi.IsDir():
				out = append(out, fmt.Sprintf("%s %s is not a directory; copies there fail", l.flag, d))
			}
		}
	}
	return out
}
