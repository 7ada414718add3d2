// Package ctl is taskctl: cobra commands that call the taskd API and print
// tables for people or JSON for scripts. JSON field names are a stable
// interface: fields are added, never renamed.
package ctl

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/taskd/taskd/internal/api"
	"github.com/taskd/taskd/internal/auth"
	"github.com/taskd/taskd/internal/pki"
	"syscall"
)

// Exit codes of taskctl; docs/exit-codes.md explains them.
const (
	ExitOK           = 0
	ExitFailed       = 1 // the request failed for another reason
	ExitUsage        = 2 // bad command line or invalid argument
	ExitUnavailable  = 3 // taskd could not be reached or is not ready
	ExitNotFound     = 4 // the named object does not exist
	ExitUnauthorized = 5 // missing, wrong or unreadable token, or not permitted
	ExitConflict     = 6 // the object's state does not allow the request
)

type usageError struct{ error }

// Main runs taskctl and returns the exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	root := newRoot(stdout)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.Execute()
	if err == nil {
		return ExitOK
	}
	code := exitCode(err)
	var fe findingsError
	if !errors.As(err, &fe) { // doctor printed its summary already
		fmt.Fprintf(stderr, "taskctl: %v\n", err)
	}
	return code
}

// brokenConnection reports whether err is a connection that broke or was
// refused, whatever code the RPC layer gave it: connect reports a reset
// during the TLS handshake as canceled or unknown, but for the operator
// taskd was not reachable (exit 3), not an internal failure (exit 1).
func brokenConnection(err error) bool {
	if c := connect.CodeOf(err); c != connect.CodeUnknown && c != connect.CodeCanceled && c != connect.CodeUnavailable {
		return false
	}
	var op *net.OpError
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || errors.As(err, &op)
}

// exitCode maps errors to exit codes: the one place that does.
func exitCode(err error) int {
	var ue usageError
	if errors.As(err, &ue) {
		return ExitUsage
	}
	var ce credentialError
	if errors.As(err, &ce) {
		return ExitUnauthorized
	}
	var te taskEndedError
	if errors.As(err, &te) {
		return ExitTaskUnsuccessful
	}
	var fe findingsError
	if errors.As(err, &fe) {
		return ExitDoctorFindings
	}
	var we waitExpiredError
	if errors.As(err, &we) {
		return ExitWaitExpired
	}
	var ure unreachableError
	if errors.As(err, &ure) {
		return ExitUnavailable
	}
	if brokenConnection(err) {
		return ExitUnavailable
	}
	switch connect.CodeOf(err) {
	case connect.CodeInvalidArgument, connect.CodeOutOfRange, connect.CodeResourceExhausted:
		return ExitUsage
	case connect.CodeUnavailable, connect.CodeDeadlineExceeded:
		return ExitUnavailable
	case connect.CodeNotFound:
		return ExitNotFound
	case connect.CodeUnauthenticated, connect.CodePermissionDenied:
		return ExitUnauthorized
	case connect.CodeFailedPrecondition, connect.CodeAborted, connect.CodeAlreadyExists:
		return ExitConflict
	}
	return ExitFailed
}

type globals struct {
	endpoint  string
	dataDir   string
	tokenFile string
	tlsCA     string
	timeout   time.Duration
	output    string
	out       io.Writer

	creds *credentials   // read once, on first use
	flags *pflag.FlagSet // the global flags, to tell where a value came from
}

// source names where a global flag's value came from, for messages about
// it: the flag when given, else its environment variable when set, else
// the flag with "(default)".
func (g *globals) source(flag, env string) string {
	if g.flags != nil {
		if f := g.flags.Lookup(flag); f != nil && f.Changed {
			return "--" + flag
		}
	}
	if v, ok := os.LookupEnv(env); ok && v != "" {
		return env
	}
	return "--" + flag + " (default)"
}

// credentials are what taskctl presents and trusts: a token, and the
// cluster CA that every server must prove itself against before the token
// is sent.
type credentials struct {
	token    string
	ca       *x509.CertPool
	caHashes []string // hex SHA-256 of each CA certificate in the file
}

// credentialError: the token or CA file cannot be used (exit 5).
type credentialError struct{ error }

func (e credentialError) Unwrap() error { return e.error }

// credentials reads the token (--token-file, else DATA_DIR/admin.token)
// and the CA (--tls-ca, else DATA_DIR/pki/ca.crt).
func (g *globals) credentials() (*credentials, error) {
	if g.creds != nil {
		return g.creds, nil
	}
	tokenPath, caPath := g.tokenFile, g.tlsCA
	if tokenPath == "" {
		tokenPath = auth.LocalFile(g.dataDir)
	}
	if caPath == "" {
		caPath = pki.In(g.dataDir).CACert()
	}
	tok, err := auth.ReadTokenFile(tokenPath)
	if err != nil {
		return nil, credentialError{fmt.Errorf("token: %w%s", err, g.hint(err, g.tokenFile == ""))}
	}
	caPEM, err := os.ReadFile(caPath)
	if err != nil {
		return nil, credentialError{fmt.Errorf("cluster CA certificate: %w%s", err, g.hint(err, g.tlsCA == ""))}
	}
	pool := x509.NewCertPool()
	var hashes []string
	for rest := caPEM; ; {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			break
		}
		if c, err := x509.ParseCertificate(blk.Bytes); err == nil && blk.Type == "CERTIFICATE" {
			pool.AddCert(c)
			hashes = append(hashes, pki.Fingerprint(c))
		}
	}
	if len(hashes) == 0 {
		return nil, credentialError{fmt.Errorf("cluster CA certificate: %s holds no PEM certificate", caPath)}
	}
	g.creds = &credentials{token: tok.String(), ca: pool, caHashes: hashes}
	return g.creds, nil
}

// hint says what to do about an unusable credential file.
func (g *globals) hint(err error, isDefault bool) string {
	switch {
	case errors.Is(err, os.ErrPermission) && isDefault:
		return "; the node's credentials in " + g.dataDir + " are readable only by root: run taskctl as root, or pass --token-file and --tls-ca"
	case errors.Is(err, os.ErrNotExist) && isDefault:
		return "; is " + g.dataDir + " (" + g.source("data-dir", "TASKD_DATA_DIR") + ") the node's data directory? Pass --data-dir (or TASKD_DATA_DIR), or --token-file and --tls-ca"
	}
	return ""
}

func (g *globals) client() (*api.Client, error) { return g.clientAt(g.endpoint, "") }

// clientAt is a client for endpoint with the global credentials. With
// expectNode set, the server must present expectNode's certificate before
// anything (the token above all) is sent.
func (g *globals) clientAt(endpoint, expectNode string) (*api.Client, error) {
	cr, err := g.credentials()
	if err != nil {
		return nil, err
	}
	c, err := api.NewClient(api.ClientConfig{Endpoint: endpoint, Token: cr.token, CA: cr.ca, ExpectNode: expectNode})
	if err != nil {
		if endpoint == g.endpoint {
			return nil, usageError{fmt.Errorf("%s: %w", g.source("endpoint", "TASKD_ENDPOINT"), err)}
		}
		return nil, usageError{err}
	}
	return c, nil
}

// memberEndpoint is the URL of a member's advertised address.
func (g *globals) memberEndpoint(addr string) string { return "https://" + addr }

func (g *globals) ctx(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	return context.WithTimeout(cmd.Context(), g.timeout)
}

func (g *globals) checkOutput() error {
	if g.timeout <= 0 {
		return usageError{fmt.Errorf("--timeout %v: give a deadline above zero, such as 10s", g.timeout)}
	}
	if g.output != "table" && g.output != "json" {
		return usageError{fmt.Errorf("-o %q: use table or json", g.output)}
	}
	return nil
}

func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok && v != "" {
		return v
	}
	return def
}

func newRoot(out io.Writer) *cobra.Command {
	g := &globals{out: out}
	root := &cobra.Command{
		Use:           "taskctl",
		Short:         "taskctl controls a taskd cluster",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(*cobra.Command, []string) error {
			return g.checkOutput()
		},
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	pf := root.PersistentFlags()
	g.flags = pf
	pf.StringVar(&g.endpoint, "endpoint", envOr("TASKD_ENDPOINT", "https://127.0.0.1:10600"), "taskd API endpoint, https://HOST:PORT or HOST:PORT (env TASKD_ENDPOINT)")
	pf.StringVar(&g.dataDir, "data-dir", envOr("TASKD_DATA_DIR", "/var/lib/taskd"), "the node's data directory, where taskctl finds admin.token and pki/ca.crt (env TASKD_DATA_DIR)")
	pf.StringVar(&g.tokenFile, "token-file", envOr("TASKD_TOKEN_FILE", ""), "file holding the API token, mode 0600 (default: DATA_DIR/admin.token; env TASKD_TOKEN_FILE)")
	pf.StringVar(&g.tlsCA, "tls-ca", envOr("TASKD_TLS_CA", ""), "cluster CA certificate (PEM) the server must prove itself against (default: DATA_DIR/pki/ca.crt; env TASKD_TLS_CA)")
	pf.DurationVar(&g.timeout, "timeout", api.DefaultTimeout, "deadline for each request")
	pf.StringVarP(&g.output, "output", "o", "table", "output format: table or json")
	root.AddCommand(serviceCmd(g), taskCmd(g), runnerCmd(g), vipCmd(g), copyCmd(g), eventsCmd(g), doctorCmd(g), scheduleCmd(g), tokenCmd(g), limitsCmd(g))
	root.Version = Version
	refuseUnknownSubcommands(root)
	addCompletions(root, g)
	return root
}

// Version is set at build time with -ldflags (taskctl --version).
var Version = "dev"

// refuseUnknownSubcommands makes every command that only groups others
// (taskctl, taskctl task, ...) answer an unknown subcommand with a usage
// error (exit 2) instead of its help and exit 0; without arguments it
// still prints its help.
//
// On every command that runs something, each other usage error cobra finds
// is a usageError too: a missing required flag (vip set without
// --interface), a flag group not respected, a wrong number of arguments.
// (Unknown flags and bad flag values go through the root's FlagErrorFunc.)
func refuseUnknownSubcommands(c *cobra.Command) {
	for _, sub := range c.Commands() {
		refuseUnknownSubcommands(sub)
	}
	if !c.HasSubCommands() {
		usageFromCobra(c)
	}
	if !c.HasSubCommands() || c.Run != nil || c.RunE != nil {
		return
	}
	c.Args = cobra.ArbitraryArgs
	if c.SuggestionsMinimumDistance <= 0 {
		c.SuggestionsMinimumDistance = 2
	}
	c.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return cmd.Help()
		}
		msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
		if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
			msg += "; did you mean " + strings.Join(s, " or ") + "?"
		}
		return usageError{fmt.Errorf("%s (see %s --help)", msg, cmd.CommandPath())}
	}
}

// usageFromCobra makes the checks cobra runs itself on c (arguments,
// required flags, flag groups) return usage errors. Cobra checks required
// flags after the pre-run hooks and returns a plain error; c checks them
// first, in its PreRunE.
func usageFromCobra(c *cobra.Command) {
	usage := func(cmd *cobra.Command, err error) error {
		var ue usageError
		if err == nil || errors.As(err, &ue) {
			return err
		}
		return usageError{fmt.Errorf("%w; usage: %s", err, cmd.UseLine())}
	}
	if args := c.Args; args != nil {
		c.Args = func(cmd *cobra.Command, a []string) error { return usage(cmd, args(cmd, a)) }
	}
	pre := c.PreRunE
	c.PreRunE = func(cmd *cobra.Command, args []string) error {
		if err := cmd.ValidateRequiredFlags(); err != nil {
			return usage(cmd, err)
		}
		if err := cmd.ValidateFlagGroups(); err != nil {
			return usage(cmd, err)
		}
		if pre != nil {
			return pre(cmd, args)
		}
		return nil
	}
}

// exactArgs is cobra.ExactArgs returning a usage error.
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := cobra.ExactArgs(n)(cmd, args); err != nil {
			return usageError{fmt.Errorf("%w; usage: %s", err, cmd.UseLine())}
		}
		return nil
	}
}
