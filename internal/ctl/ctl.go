// Package ctl is taskctl: cobra commands that call the taskd API and print
// tables for people or JSON for scripts. JSON field names are a stable
// interface: fields are added, never renamed.
package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"github.com/taskd/taskd/internal/api"
)

// Exit codes of taskctl; docs/exit-codes.md explains them.
const (
	ExitOK           = 0
	ExitFailed       = 1 // the request failed for another reason
	ExitUsage        = 2 // bad command line or invalid argument
	ExitUnavailable  = 3 // taskd could not be reached or is not ready
	ExitNotFound     = 4 // the named object does not exist
	ExitUnauthorized = 5 // missing or wrong token, or not permitted
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
	fmt.Fprintf(stderr, "taskctl: %v\n", err)
	return code
}

// exitCode maps errors to exit codes: the one place that does.
func exitCode(err error) int {
	var ue usageError
	if errors.As(err, &ue) {
		return ExitUsage
	}
	var te taskEndedError
	if errors.As(err, &te) {
		return ExitTaskUnsuccessful
	}
	var fe findingsError
	if errors.As(err, &fe) {
		return ExitDoctorFindings
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
	tokenFile string
	tlsCA     string
	timeout   time.Duration
	output    string
	out       io.Writer
}

func (g *globals) client() (*api.Client, error) { return g.clientAt(g.endpoint) }

// clientAt is a client for endpoint with the global token and TLS settings.
func (g *globals) clientAt(endpoint string) (*api.Client, error) {
	tok, err := api.ReadToken(g.tokenFile)
	if err != nil {
		return nil, usageError{err}
	}
	c, err := api.NewClient(api.ClientConfig{Endpoint: endpoint, Token: tok, TLSCA: g.tlsCA})
	if err != nil {
		return nil, usageError{err}
	}
	return c, nil
}

// memberEndpoint is the URL of a member's advertised address, in the
// scheme of --endpoint (a cluster serves either TLS or not).
func (g *globals) memberEndpoint(addr string) string {
	if strings.HasPrefix(g.endpoint, "https://") {
		return "https://" + addr
	}
	return "http://" + addr
}

func (g *globals) ctx(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	return context.WithTimeout(cmd.Context(), g.timeout)
}

func (g *globals) checkOutput() error {
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
	pf.StringVar(&g.endpoint, "endpoint", envOr("TASKD_ENDPOINT", "http://127.0.0.1:10600"), "taskd API endpoint (env TASKD_ENDPOINT)")
	pf.StringVar(&g.tokenFile, "token-file", envOr("TASKD_TOKEN_FILE", ""), "file holding the bearer token (env TASKD_TOKEN_FILE)")
	pf.StringVar(&g.tlsCA, "tls-ca", envOr("TASKD_TLS_CA", ""), "CA certificate (PEM) to verify an https endpoint (env TASKD_TLS_CA)")
	pf.DurationVar(&g.timeout, "timeout", api.DefaultTimeout, "deadline for each request")
	pf.StringVarP(&g.output, "output", "o", "table", "output format: table or json")
	root.AddCommand(serviceCmd(g), taskCmd(g), runnerCmd(g), vipCmd(g), copyCmd(g), eventsCmd(g), doctorCmd(g), scheduleCmd(g))
	return root
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
