package auth_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/auth"
	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/testenv"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const root = "/taskd"

func waitFor(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	if err := testenv.WaitFor(ctx, 5*time.Millisecond, cond); err != nil {
		t.Fatalf("%s: not within %v", what, limit)
	}
}

// runVerifier runs v against store until the test ends.
func runVerifier(t *testing.T, v *auth.Verifier, store coord.Store) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); v.Run(ctx, store) }()
	t.Cleanup(func() { cancel(); wg.Wait() })
}

// TestVerifier runs on both backends: the node's own admin token works
// before the store is reached, is registered there, and keeps working with
// every other token through a store outage; tokens made elsewhere are
// accepted once the watch delivers them, refused when expired or revoked;
// a revoked local token is replaced by a new one.
func TestVerifier(t *testing.T) {
	for _, b := range testenv.Backends(t) {
		t.Run(b.Name, func(t *testing.T) {
			admin := b.Open(t) // an operator's direct view of the store
			proxy := testenv.StartProxy(t, b.Addr)
			nodeStore := b.Dial(t, proxy.Addr())
			dir := t.TempDir()
			local, err := auth.LoadLocal(dir, "n1")
			if err != nil {
				t.Fatal(err)
			}
			var clock atomic.Int64
			clock.Store(time.Now().UnixNano())
			v := auth.NewVerifier(root, "n1", local, slog.Default())
			auth.SetClock(v, func() time.Time { return time.Unix(0, clock.Load()) })

			// Before the store is reached: only the local admin token.
			id, err := v.Verify(local.Token.String())
			if err != nil || id.Role != auth.Admin || !id.Local {
				t.Fatalf("local token before the store is reached: %+v %v", id, err)
			}
			other := auth.NewToken()
			if _, err := v.Verify(other.String()); !errors.Is(err, auth.ErrNotLoaded) {
				t.Fatalf("unknown token before the records are loaded: %v, want ErrNotLoaded", err)
			}
			wrongLocal := auth.Token{ID: local.Token.ID, Secret: auth.NewToken().Secret}
			if _, err := v.Verify(wrongLocal.String()); !errors.Is(err, auth.ErrUnauthenticated) {
				t.Fatalf("local id with a wrong secret: %v", err)
			}

			runVerifier(t, v, nodeStore)
			localKey, _ := auth.Key(root, local.Token.ID)
			// Not registered before the node has joined.
			waitFor(t, "records loaded", 10*time.Second, v.Synced)
			if _, err := admin.Get(context.Background(), localKey); !errors.Is(err, coord.ErrNotFound) {
				t.Fatalf("local token registered before the node joined: %v", err)
			}
			if _, err := v.Verify(local.Token.String()); err != nil {
				t.Fatalf("local token before registration, records loaded: %v", err)
			}
			v.Joined()
			waitFor(t, "local token registered in the store", 10*time.Second, func() bool {
				_, err := admin.Get(context.Background(), localKey)
				return err == nil && v.Synced()
			})
			ctx := context.Background()
			now := time.Unix(0, clock.Load())
			viewer, rec, err := auth.Create(ctx, admin, root, auth.CreateRequest{Role: auth.Viewer, CreatedBy: "test"}, now)
			if err != nil || rec.Role != auth.Viewer || rec.SHA256 == "" || !rec.Expires.IsZero() {
				t.Fatalf("create viewer: %+v %v", rec, err)
			}
			short, _, err := auth.Create(ctx, admin, root, auth.CreateRequest{Role: auth.Operator, TTL: time.Minute, CreatedBy: "test"}, now)
			if err != nil {
				t.Fatal(err)
			}
			waitFor(t, "new tokens accepted", 5*time.Second, func() bool {
				_, e1 := v.Verify(viewer.String())
				_, e2 := v.Verify(short.String())
				return e1 == nil && e2 == nil
			})
			if id, _ := v.Verify(viewer.String()); id.Role != auth.Viewer || id.TokenID != viewer.ID || id.Local {
				t.Fatalf("viewer identity: %+v", id)
			}
			if _, err := v.Verify(auth.Token{ID: viewer.ID, Secret: other.Secret}.String()); !errors.Is(err, auth.ErrUnauthenticated) {
				t.Fatalf("right id, wrong secret: %v", err)
			}
			if _, err := v.Verify(other.String()); !errors.Is(err, auth.ErrUnauthenticated) {
				t.Fatalf("unknown id after loading: %v", err)
			}
			clock.Add(int64(time.Minute))
			if _, err := v.Verify(short.String()); !errors.Is(err, auth.ErrExpired) {
				t.Fatalf("expired token: %v", err)
			}

			// The store is unreachable: the last known records still decide.
			proxy.Pause()
			for _, tok := range []auth.Token{viewer, local.Token} {
				if _, err := v.Verify(tok.String()); err != nil {
					t.Fatalf("token %s during the store outage: %v", tok.ID, err)
				}
			}
			if _, err := v.Verify(other.String()); !errors.Is(err, auth.ErrUnauthenticated) {
				t.Fatalf("unknown token during the outage: %v", err)
			}
			proxy.Resume()

			// Revocation reaches the verifier through its watch.
			if err := auth.Revoke(ctx, admin, root, viewer.ID); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "revoked token refused", 5*time.Second, func() bool {
				_, err := v.Verify(viewer.String())
				return errors.Is(err, auth.ErrUnauthenticated)
			})
			if err := auth.Revoke(ctx, admin, root, viewer.ID); !errors.Is(err, auth.ErrNotFound) {
				t.Fatalf("revoking twice: %v, want ErrNotFound", err)
			}

			// Revoking the local token: the old secret dies everywhere and
			// the node writes and registers a new one.
			if err := auth.Revoke(ctx, admin, root, local.Token.ID); err != nil {
				t.Fatal(err)
			}
			var fresh auth.Token
			waitFor(t, "local token replaced", 10*time.Second, func() bool {
				tok, err := auth.ReadTokenFile(local.Path)
				if err != nil || tok == local.Token {
					return false
				}
				fresh = tok
				_, err = admin.Get(ctx, localKey)
				_, verr := v.Verify(tok.String())
				return err == nil && verr == nil
			})
			if _, err := v.Verify(local.Token.String()); !errors.Is(err, auth.ErrUnauthenticated) {
				t.Fatalf("revoked local token still accepted: %v", err)
			}
			if fresh.ID != local.Token.ID {
				t.Fatalf("new local token has id %s, want %s", fresh.ID, local.Token.ID)
			}
			recs, err := auth.List(ctx, admin, root)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range recs {
				if r.ID == fresh.ID && r.CreatedBy != "node n1" {
					t.Fatalf("local record: %+v", r)
				}
			}
		})
	}
}

func TestCreateRefusesBadInput(t *testing.T) {
	b := testenv.Backends(t)[0]
	store := b.Open(t)
	ctx := context.Background()
	for name, req := range map[string]auth.CreateRequest{
		"unknown role":      {Role: "root"},
		"empty role":        {Role: ""},
		"negative ttl":      {Role: auth.Viewer, TTL: -time.Second},
		"ttl too long":      {Role: auth.Viewer, TTL: auth.MaxTTL + time.Hour},
		"long description":  {Role: auth.Viewer, Description: string(make([]byte, 201))},
		"control character": {Role: auth.Viewer, Description: "a\x1b[2Jb"},
	} {
		if _, _, err := auth.Create(ctx, store, root, req, time.Now()); !errors.Is(err, auth.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	if recs, err := auth.List(ctx, store, root); err != nil || len(recs) != 0 {
		t.Fatalf("refused requests stored records: %v %v", recs, err)
	}
	tok, rec, err := auth.Create(ctx, store, root, auth.CreateRequest{Role: auth.Join}, time.Now())
	if err != nil || rec.Expires.IsZero() || time.Until(rec.Expires) > auth.DefaultJoinTTL {
		t.Fatalf("join token without ttl: %+v %v", rec, err)
	}
	for _, id := range []string{"..", "../../election/epoch", "", "0123ABCD", tok.ID + "/x"} {
		if err := auth.Revoke(ctx, store, root, id); !errors.Is(err, auth.ErrInvalid) {
			t.Errorf("Revoke(%q) = %v, want ErrInvalid", id, err)
		}
	}
	if recs, _ := auth.List(ctx, store, root); len(recs) != 1 || recs[0].ID != tok.ID {
		t.Fatalf("records after refused revocations: %+v", recs)
	}
}

func TestLocalFile(t *testing.T) {
	dir := t.TempDir()
	l, err := auth.LoadLocal(dir, "n1")
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(l.Path)
	if err != nil || fi.Mode().Perm() != 0o600 || l.Path != filepath.Join(dir, "admin.token") {
		t.Fatalf("admin.token: %v %v", fi, err)
	}
	again, err := auth.LoadLocal(dir, "n1")
	if err != nil || again != l {
		t.Fatalf("second load returned another token: %v", err)
	}
	before, _ := os.ReadFile(l.Path)
	check := func(name string, prepare func(), want string) {
		t.Helper()
		prepare()
		if _, err := auth.LoadLocal(dir, "n1"); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error mentioning %q", name, err, want)
		}
		if err := os.WriteFile(l.Path, before, 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chmod(l.Path, 0o600)
	}
	check("group readable", func() { os.Chmod(l.Path, 0o640) }, "chmod 600")
	check("world readable", func() { os.Chmod(l.Path, 0o604) }, "chmod 600")
	check("malformed", func() { os.WriteFile(l.Path, []byte("s3cret\n"), 0o600) }, "taskd.ID.SECRET")
	check("two tokens", func() {
		os.WriteFile(l.Path, []byte(l.Token.String()+"\n"+auth.NewToken().String()+"\n"), 0o600)
	}, "taskd.ID.SECRET")
	check("huge", func() { os.WriteFile(l.Path, make([]byte, 1<<20), 0o600) }, "more than one token")
	check("another node's", func() {
		os.WriteFile(l.Path, []byte(auth.NewLocal(dir, "n2").Token.String()), 0o600)
	}, "remove the file")
	if after, _ := os.ReadFile(l.Path); string(after) != string(before) {
		t.Fatal("the file changed")
	}
}
