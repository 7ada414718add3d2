package ctl

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/pki"
)

// ExitDoctorFindings: taskctl doctor found something wrong.
const ExitDoctorFindings = 8

// maxSkew is the clock difference doctor reports: leases, deadlines and
// the timeline all assume clocks that agree far better than a second.
const maxSkew = 500 * time.Millisecond

// findingsError: doctor found problems (exit 8). Its summary line is
// already printed, so taskctl prints nothing more.
type findingsError struct{ failed, checks int }

func (e findingsError) Error() string { return summaryLine(e.checks, e.failed) }

// summaryLine ends doctor's output: how many checks ran and failed.
func summaryLine(checks, failed int) string {
	if failed == 0 {
		return fmt.Sprintf("%d checks, all ok", checks)
	}
	return fmt.Sprintf("%d checks, %d failed", checks, failed)
}

// check is one line of doctor: ok, FAIL, or a note (what is by design but
// worth knowing; no check).
type check struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

// doctorReport is doctor's JSON output (-o json).
type doctorReport struct {
	OK      bool    `json:"ok"`
	Checks  int     `json:"checks"`
	Failed  int     `json:"failed"`
	Results []check `json:"results"`
}

type doctor struct {
	results  []check
	checks   int
	findings int
}

func (d *doctor) add(status, format string, args ...any) {
	d.results = append(d.results, check{status, fmt.Sprintf(format, args...)})
}

func (d *doctor) ok(format string, args ...any) { d.checks++; d.add("ok", format, args...) }

// note reports what is by design but worth knowing; it is no finding.
func (d *doctor) note(format string, args ...any) { d.add("note", format, args...) }

func (d *doctor) bad(format string, args ...any) {
	d.checks++
	d.findings++
	d.add("FAIL", format, args...)
}

// write prints one line per check and the summary, or the JSON report.
func (d *doctor) write(w io.Writer, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		return enc.Encode(doctorReport{OK: d.findings == 0, Checks: d.checks, Failed: d.findings, Results: d.results})
	}
	var b strings.Builder
	for _, c := range d.results {
		fmt.Fprintf(&b, "%-5s %s\n", c.Status, c.Message)
	}
	b.WriteString(summaryLine(d.checks, d.findings) + "\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// doctorCmd checks the cluster as taskctl sees it and explains problems.
func doctorCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "doctor",
		Short: "Check the cluster and explain what is wrong; exit 8 if anything is",
		Long: "Checks, through every member's API: the token and TLS (each member must present its own\n" +
			"certificate of this cluster before the token is sent), that each member reaches the\n" +
			"coordinator (a live session), the session timeout against the local deadline and across\n" +
			"members, clock skew between members and this host, member health, and that every\n" +
			"member answers under its own name at its advertised address. A member that was part of the\n" +
			"cluster and is down (it joined, or it is an embedded etcd member or a specified member) is a\n" +
			"finding, with since when; so is a member without a store session, naming the unreachable members.\n" +
			"One line per check (ok or FAIL; note lines are no check), then the number of checks and failures.\n" +
			"-o json: {\"ok\", \"checks\", \"failed\", \"results\": [{\"status\", \"message\"}]}.",
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			var d doctor
			d.run(cmd.Context(), g)
			if err := d.write(g.out, g.output == "json"); err != nil {
				return err
			}
			if d.findings > 0 {
				return findingsError{failed: d.findings, checks: d.checks}
			}
			return nil
		},
	}
}

// ask calls ListMembers on endpoint and measures the skew of its clock
// against ours (its answer time against the middle of the round trip).
func ask(ctx context.Context, g *globals, endpoint, expect string) (*taskdv1.ListMembersResponse, time.Duration, error) {
	c, err := g.clientAt(endpoint, expect)
	if err != nil {
		return nil, 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	t0 := time.Now()
	r, err := c.Cluster.ListMembers(ctx, connect.NewRequest(&taskdv1.ListMembersRequest{}))
	t1 := time.Now()
	if err != nil {
		return nil, 0, err
	}
	var skew time.Duration
	if st := r.Msg.ServerTime; st != nil {
		skew = st.AsTime().Sub(t0.Add(t1.Sub(t0) / 2))
	}
	return r.Msg, skew, nil
}

func explain(err error) string {
	if errors.Is(err, pki.ErrIdentity) {
		return "the server did not prove it is this member (" + err.Error() + "); the token was not sent. " +
			"A member record in the store may point at a wrong or hostile address, or --tls-ca is not this cluster's CA"
	}
	var ce credentialError
	if errors.As(err, &ce) {
		return err.Error()
	}
	if tlsFailed(err) {
		return "TLS failed: " + err.Error() + " (check --tls-ca)"
	}
	switch connect.CodeOf(err) {
	case connect.CodeUnauthenticated:
		return "the token is missing, wrong, expired or revoked: " + err.Error()
	case connect.CodePermissionDenied:
		return "the token may not do this: " + err.Error()
	case connect.CodeUnavailable:
		return "not reachable: " + err.Error()
	}
	return err.Error()
}

// tlsFailed tells a failed TLS handshake by the error's type, never by its
// text (a server's message may mention "tls" and mean nothing of it): a
// certificate the standard verification refused, an answer that is not
// TLS (a plain-HTTP port), or an alert the server sent (it refused our
// certificate or our protocol). pki.ErrIdentity, the cluster's own
// verification, is explained before.
func tlsFailed(err error) bool {
	var (
		verify    *tls.CertificateVerificationError
		notTLS    tls.RecordHeaderError
		unknownCA x509.UnknownAuthorityError
		host      x509.HostnameError
		invalid   x509.CertificateInvalidError
		op        *net.OpError
	)
	switch {
	case errors.As(err, &verify), errors.As(err, &notTLS), errors.As(err, &unknownCA),
		errors.As(err, &host), errors.As(err, &invalid):
		return true
	case errors.As(err, &op):
		// crypto/tls reports an alert from the peer as a *net.OpError
		// with this Op (its alert type is not exported).
		return op.Op == "remote error"
	}
	return false
}

func (d *doctor) run(ctx context.Context, g *globals) {
	first, skew, err := ask(ctx, g, g.endpoint, "")
	if err != nil {
		d.bad("%s: %s", g.endpoint, explain(err))
		return
	}
	d.ok("%s answers as %s (coordinator %s)", g.endpoint, first.Self, first.Coordinator)
	answers := map[string]*taskdv1.ListMembersResponse{first.Self: first}
	skews := map[string]time.Duration{first.Self: skew}
	var unreachable []string
	for _, m := range first.Members {
		if m.Name == first.Self {
			continue
		}
		if m.State == "down" {
			unreachable = append(unreachable, m.Name)
			d.bad("member %s is down: %s; start it again, or if it was decommissioned: taskctl service forget %s", m.Name, downSince(m, time.Now()), m.Name)
			// A node starved of CPU loses its session, so it shows down;
			// if it still answers, say why.
			if m.Address != "" {
				if r, _, err := ask(ctx, g, g.memberEndpoint(m.Address), m.Name); err == nil && r.Self == m.Name && r.SelfStarved {
					d.bad("%s: %s (starved of CPU: it advertises priority 0 and does not lead until it recovers)", m.Name, r.SelfStarvedReason)
				}
			}
			continue
		}
		r, sk, err := ask(ctx, g, g.memberEndpoint(m.Address), m.Name)
		switch {
		case err != nil:
			unreachable = append(unreachable, m.Name)
			d.bad("member %s at its advertised address %s: %s", m.Name, m.Address, explain(err))
			continue
		case r.Self != m.Name:
			d.bad("member %s advertises %s, but the node there answers as %s: two nodes share an address, or --advertise is wrong", m.Name, m.Address, r.Self)
			continue
		}
		answers[m.Name], skews[m.Name] = r, sk
	}
	timeouts := map[int64][]string{}
	for _, m := range first.Members {
		r, ok := answers[m.Name]
		if !ok {
			if m.Starved {
				d.bad("%s: %s (starved of CPU, as its record says: it advertises priority 0 and does not lead until it recovers)", m.Name, m.StarvedReason)
			}
			continue
		}
		if r.SelfSession != "running" || !r.SelfReady {
			d.bad("member %s has no live session with the coordinator (%s): %s", m.Name, sessionSince(r), noSessionReason(r, unreachable))
		} else {
			d.ok("member %s reaches the coordinator (session running)", m.Name)
		}
		if m.Health != "" && m.Health != "ok" {
			d.bad("member %s is unhealthy: %s", m.Name, m.HealthReason)
		} else {
			d.ok("member %s is healthy", m.Name)
		}
		if starved, reason := starvation(r, m); starved {
			d.bad("%s: %s (starved of CPU: it advertises priority 0 and does not lead until it recovers)", m.Name, reason)
		}
		timeouts[r.SessionTimeoutMs] = append(timeouts[r.SessionTimeoutMs], m.Name)
		deadline := time.Duration(float64(r.SessionTimeoutMs)*r.DeadlineFraction) * time.Millisecond
		if budget := time.Duration(r.SessionTimeoutMs)*time.Millisecond - deadline; budget < 500*time.Millisecond {
			d.bad("member %s fences only %v before its session can expire (timeout %dms, deadline fraction %.2f): raise --session-timeout or lower --deadline-fraction",
				m.Name, budget, r.SessionTimeoutMs, r.DeadlineFraction)
		} else {
			d.ok("member %s fences %v before its session can expire", m.Name, budget)
		}
		if sk := skews[m.Name]; sk > maxSkew || sk < -maxSkew {
			d.bad("member %s's clock is %v off this host's: synchronise the clocks (NTP); windows, the timeline and lease checks assume agreeing clocks", m.Name, sk.Round(time.Millisecond))
		} else {
			d.ok("member %s's clock is within %v of this host's (%v)", m.Name, maxSkew, sk.Round(time.Millisecond))
		}
	}
	if len(timeouts) > 1 {
		var parts []string
		for _, t := range slices.Sorted(maps.Keys(timeouts)) {
			parts = append(parts, fmt.Sprintf("%v on %s", time.Duration(t)*time.Millisecond, strings.Join(timeouts[t], ",")))
		}
		d.bad("members use different session timeouts (%s): give every node the same --session-timeout, or failover times differ by node", strings.Join(parts, "; "))
	} else {
		for t := range timeouts {
			d.ok("every member uses a session timeout of %dms", t)
		}
	}
	ids := map[string]string{}
	dupIDs := false
	for _, m := range first.Members {
		if m.State == "down" {
			continue
		}
		if other, dup := ids[m.NodeId]; dup && m.NodeId != "" {
			dupIDs = true
			d.bad("members %s and %s share node id %s: one data directory was copied from the other; give one a fresh data directory", other, m.Name, m.NodeId)
		}
		ids[m.NodeId] = m.Name
	}
	if !dupIDs {
		d.ok("every live member has its own node id")
	}
	if first.Leader == "" {
		d.bad("there is no leader: tasks are not dispatched and VIPs are not held")
	} else {
		d.ok("%s leads", first.Leader)
	}
	if !first.SelfReady || first.SelfSession != "running" {
		// Its store reads would only run into the deadline.
		d.note("vips not checked: %s has no store session", first.Self)
		return
	}
	d.vips(ctx, g)
}

// starvation is what member m says about its own CPU starvation (live,
// whatever its session), else what its record says.
func starvation(r *taskdv1.ListMembersResponse, m *taskdv1.Member) (bool, string) {
	if r.SelfStarved {
		return true, r.SelfStarvedReason
	}
	for _, self := range r.Members {
		if self.Name == r.Self {
			return self.Starved, self.StarvedReason
		}
	}
	return m.Starved, m.StarvedReason
}

// sessionSince is "session STATE since T (D ago)".
func sessionSince(r *taskdv1.ListMembersResponse) string {
	out := "session " + r.SelfSession
	if r.SelfSessionSince != nil {
		t := r.SelfSessionSince.AsTime()
		out += " since " + t.Local().Format(time.RFC3339) + " (" + human(time.Since(t)) + " ago)"
	}
	return out
}

// noSessionReason says why a member has no session: with members
// unreachable, most likely the store lost its quorum, which the store's
// own error ("etcd grant lease: store unavailable") does not say.
func noSessionReason(r *taskdv1.ListMembersResponse, unreachable []string) string {
	if len(unreachable) == 0 {
		return r.SelfError
	}
	why := "members " + strings.Join(unreachable, ", ") + " are unreachable"
	if len(unreachable) == 1 {
		why = "member " + unreachable[0] + " is unreachable"
	}
	why += ": the store may have lost its quorum; start them again"
	if r.SelfError != "" {
		why += " (the store said: " + r.SelfError + ")"
	}
	return why
}

// downSince says since when a down member has been gone, and why it counts.
func downSince(m *taskdv1.Member, now time.Time) string {
	out := "never seen alive by taskd"
	if m.Since != nil {
		t := m.Since.AsTime()
		out = "last seen " + t.Local().Format(time.RFC3339) + " (" + human(now.Sub(t)) + " ago)"
	}
	if len(m.Sources) > 0 {
		out += "; " + memberOf(m.Sources)
	}
	return out
}

// memberOf explains the sources of a down member.
func memberOf(sources []string) string {
	var parts []string
	for _, s := range sources {
		switch s {
		case "known":
			parts = append(parts, "it joined this cluster")
		case "etcd":
			parts = append(parts, "it is an embedded etcd member")
		case "specified":
			parts = append(parts, "it is a specified member")
		}
	}
	return strings.Join(parts, ", ")
}

// vips checks that every VIP is held, up, by a healthy node.
func (d *doctor) vips(ctx context.Context, g *globals) {
	c, err := g.client()
	if err != nil {
		d.bad("vips: %s", explain(err))
		return
	}
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	resp, err := c.VIPs.ListVIPs(ctx, connect.NewRequest(&taskdv1.ListVIPsRequest{}))
	if err != nil {
		d.bad("vips: %s", explain(err))
		return
	}
	for _, v := range resp.Msg.Vips {
		switch {
		case v.Holder == "" && len(v.Refused) > 0:
			d.bad("vip %s (%s) is held by no node (assigned to %q; %d member(s) refuse it by their allowlists, below)", v.Service, v.Address, v.Assigned, len(v.Refused))
		case v.Holder == "":
			d.bad("vip %s (%s) is held by no node (assigned to %q): taskctl vip list; the assigned node's log says why", v.Service, v.Address, v.Assigned)
		case v.Error != "":
			d.bad("vip %s (%s) on %s is not up: %s", v.Service, v.Address, v.Holder, v.Error)
		case !v.Up:
			d.bad("vip %s (%s) is being taken by %s but not up yet", v.Service, v.Address, v.Holder)
		case v.HolderHealth != "ok":
			d.bad("vip %s (%s) is up on %s, whose health is %s", v.Service, v.Address, v.Holder, v.HolderHealth)
		default:
			d.ok("vip %s (%s) is up on %s", v.Service, v.Address, v.Holder)
		}
		for _, n := range slices.Sorted(maps.Keys(v.Refused)) {
			d.note("vip %s (%s) is never assigned to %s: %s", v.Service, v.Address, n, v.Refused[n])
		}
	}
}
