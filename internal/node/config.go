package node

import (
	"errors"
	"fmt"
	"github.com/taskd/taskd/internal/vip"
	"os"
	"time"

	"github.com/taskd/taskd/internal/api"
	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/quorum"
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
	TokenFile        string
	TLSCert          string
	TLSKey           string
	ShutdownTimeout  time.Duration
	// VIPs the leader holds, as SERVICE=IP[/PREFIX]@INTERFACE.
	VIPs []string

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
// touching the disk; token and TLS files are read at start.
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
	sc := api.ServerConfig{Listen: c.Listen, Token: "set-if-file", TLSCert: c.TLSCert, TLSKey: c.TLSKey}
	if c.TokenFile == "" {
		sc.Token = ""
	}
	if err := sc.Validate(); err != nil {
		errs = append(errs, err)
	}
	if _, err := c.vipSpecs(); err != nil {
		errs = append(errs, err)
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
