package ctl

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/internal/auth"
	"github.com/taskd/taskd/internal/pki"
)

func tokenCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Create, list and revoke API tokens (admin)",
		Long: "API tokens are kept hashed in the coordination store; every node verifies them. Roles:\n" +
			"  viewer    reads: lists, show, wait, events, doctor, /metrics\n" +
			"  operator  viewer, plus tasks (create, cancel, pause, resume, set-window, set-rate, copy),\n" +
			"            schedules (create, pause, resume, trigger, delete)\n" +
			"            and runners (cordon, uncordon, drain)\n" +
			"  admin     operator, plus priorities, specified members, VIPs and tokens\n" +
			"  join      only lets a new node join the cluster (printed as a join token)"}
	cmd.AddCommand(tokenCreateCmd(g), tokenListCmd(g), tokenRevokeCmd(g))
	return cmd
}

// parseTTL takes a Go duration (90m, 12h) or a number of days (30d).
func parseTTL(s string) (time.Duration, error) {
	if s == "" || s == "0" {
		return 0, nil
	}
	if d, ok := strings.CutSuffix(s, "d"); ok {
		if n, err := strconv.Atoi(d); err == nil && n > 0 && n <= int(auth.MaxTTL/(24*time.Hour)) {
			return time.Duration(n) * 24 * time.Hour, nil
		}
	} else if d, err := time.ParseDuration(s); err == nil && d > 0 && d <= auth.MaxTTL {
		return d.Round(time.Second), nil
	}
	return 0, fmt.Errorf("--ttl %q: use a duration such as 90m, 12h or 30d, at most %d days (0: never expires)", s, int(auth.MaxTTL/(24*time.Hour)))
}

func tokenCreateCmd(g *globals) *cobra.Command {
	var role, ttl, desc string
	cmd := &cobra.Command{
		Use:   "create --role viewer|operator|admin|join [--ttl D] [--description S]",
		Short: "Make a token and print it, once (the store keeps only its hash)",
		Long: "Make a token and print it. This is the only time the secret is shown: store it in a file\n" +
			"of mode 0600 and give that to taskctl with --token-file. A join token (--role join) is\n" +
			"printed as taskd-join:CAHASH:CREDENTIAL, which pins this cluster's CA for the joining node;\n" +
			"it expires after 24h unless --ttl says otherwise.",
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := auth.ParseRole(role)
			if err != nil {
				return usageError{fmt.Errorf("--role: %w", err)}
			}
			d, err := parseTTL(ttl)
			if err != nil {
				return usageError{err}
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := g.ctx(cmd)
			defer cancel()
			resp, err := c.Tokens.CreateToken(ctx, connect.NewRequest(&taskdv1.CreateTokenRequest{
				Role: string(r), TtlSeconds: int64(d / time.Second), Description: desc}))
			if err != nil {
				return fmt.Errorf("create token: %w", err)
			}
			m := resp.Msg
			if r == auth.Join {
				// The hash a joining node pins must be of the CA this
				// taskctl trusts, not merely what the server says.
				if !slices.Contains(g.creds.caHashes, m.CaSha256) {
					return fmt.Errorf("create token: the server reports CA %s, which is not in the CA file taskctl trusts; token %s was made: revoke it", m.CaSha256, m.Info.GetId())
				}
				m.Token = pki.JoinToken{CAHash: m.CaSha256, Credential: m.Token}.String()
			}
			if g.output == "json" {
				return g.printJSON(m)
			}
			_, err = fmt.Fprintln(g.out, m.Token)
			exp := "never expires"
			if m.Info.Expires != nil {
				exp = "expires " + m.Info.Expires.AsTime().Local().Format(time.RFC3339)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "token %s, role %s, %s; shown only now\n", m.Info.Id, m.Info.Role, exp)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&role, "role", "", "viewer, operator, admin or join (required)")
	f.StringVar(&ttl, "ttl", "", "lifetime: 90m, 12h, 30d (default: never; join tokens: 24h)")
	f.StringVar(&desc, "description", "", "who or what the token is for, shown by token list")
	return cmd
}

func tokenListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List tokens (never their secrets)",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := g.ctx(cmd)
			defer cancel()
			resp, err := c.Tokens.ListTokens(ctx, connect.NewRequest(&taskdv1.ListTokensRequest{}))
			if err != nil {
				return fmt.Errorf("list tokens: %w", err)
			}
			if g.output == "json" {
				return g.printJSON(resp.Msg)
			}
			tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tROLE\tCREATED\tEXPIRES\tCREATED BY\tDESCRIPTION")
			for _, t := range resp.Msg.Tokens {
				exp := "never"
				if t.Expires != nil {
					exp = t.Expires.AsTime().Local().Format("2006-01-02 15:04 MST")
					if t.Expired {
						exp += " (expired)"
					}
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", t.Id, t.Role, t.Created.AsTime().Local().Format("2006-01-02 15:04 MST"),
					exp, t.CreatedBy, t.Description)
			}
			return tw.Flush()
		},
	}
}

func tokenRevokeCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a token: every node refuses it from the moment it sees the change (normally well under a second)",
		Long: "Revoke a token by its id (taskctl token list). Revoking a node's local admin token makes\n" +
			"that node write a new DATA_DIR/admin.token at once.",
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !auth.ValidID(args[0]) {
				return usageError{fmt.Errorf("token id %q: want the 8 hex digits shown by taskctl token list", args[0])}
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := g.ctx(cmd)
			defer cancel()
			if _, err := c.Tokens.RevokeToken(ctx, connect.NewRequest(&taskdv1.RevokeTokenRequest{Id: args[0]})); err != nil {
				return fmt.Errorf("revoke token %s: %w", args[0], err)
			}
			if g.output == "json" {
				return g.printJSON(&taskdv1.RevokeTokenResponse{})
			}
			_, err = fmt.Fprintf(g.out, "token %s revoked\n", args[0])
			return err
		},
	}
}
