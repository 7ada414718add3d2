package node

import (
	"errors"
	"fmt"
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
	"github.com/taskd/taskd/internal/quorum"
	"github.com/taskd/taskd/internal/runner"
	"github.com/taskd/taskd/internal/vip"
)

// Config is everything a taskd node is started with. Flags, TASKD_*
// environment variables and the config file fill it (cmd/taskd).
type Config struct {
	Name             string
	DataDir          string
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
	// Access-network health probes (ICMP echo).
	HealthTargets  []string
	HealthInterval time.Duration
	HealthTimeout  time.Duration
	HealthRise     int
	HealthFall     int
	// ClockOffsetFile: fault injection (hidden flag). See clock.go.
	ClockOffsetFile string

	// Tasks.
	RunnerCapacity     int
	RunnerTypeCapacity []string // TYPE=N
	TaskRetention      time.Duration
	TimeZone           string // default zone of run windows
	// VolumeRoots confine the file:// endpoints of copy tasks.
	VolumeRoots []string

	// Embedded etcd (--coordinator embedded).
	EtcdClientURL      string
	EtcdPeerURL        string
	EtcdInitialCluster string
	EtcdClusterState   string
	EtcdLogLevel       string

	Version string
}

// DefaultConfig returns the defaults documented in docs/configuration.md.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	q := quorum.DefaultConfig()
	return Config{
		Name:             host,
		DataDir:          "/var/lib/taskd",
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
		HealthInterval:   health.DefaultConfig().Interval,
		HealthTimeout:    health.DefaultConfig().Timeout,
		HealthRise:       health.DefaultConfig().Rise,
		HealthFall:       health.DefaultConfig().Fall,
		EtcdClientURL:    "http://127.0.0.1:10601",
		EtcdPeerURL:      "http://127.0.0.1:10602",
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
	if !quorum.ValidName(c.Name) {
		errs = append(errs, fmt.Errorf("--name %q: use 1-63 letters, digits, '.', '_' or '-'", c.Name))
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("--data-dir is empty"))
	}
	if _, err := coord.ParseTarget(c.Coordinator); err != nil {
		errs = append(errs, fmt.Errorf("--coordinator: %w", err))
	}
	if err := quorum.ValidatePriority(c.Priority); err != nil {
		errs = append(errs, fmt.Errorf("--priority: %w", err))
	}
	qc := c.quorumConfig("validate")
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

// vipSpecs parses --vip; services and addresses must be unique.
func (c Config) vipSpecs() ([]vip.Spec, error) {
	var out []vip.Spec
	for _, v := range c.VIPs {
		s, err := vip.ParseSpec(v)
		if err != nil {
			return nil, fmt.Errorf("--vip: %w", err)
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
	rc.Node, rc.Capacity, rc.DeadlineFraction = c.Name, c.RunnerCapacity, c.DeadlineFraction
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
	q.Name, q.NodeID, q.Address, q.Version = c.Name, nodeID, c.advertise(), c.Version
	q.Priority, q.SessionTimeout, q.DeadlineFraction, q.YieldGrace = c.Priority, c.SessionTimeout, c.DeadlineFraction, c.YieldGrace
	return q
}
