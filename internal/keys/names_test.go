package keys_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/taskd/taskd/internal/keys"
)

// hostile are values an attacker sends for any name: traversal, separators,
// control characters, encodings and sizes. No kind accepts any of them.
var hostile = []string{
	"", ".", "..", "/", "//", "../", "./", "..\\", "a/b", "/a", "a/", "../../tasks/active/x",
	"../../election/epoch", "..%2f..%2f", "a\x00b", "\x00", "a\nb", "a\rb", "a\tb", "\x7f", "a b",
	"\xff\xfe", "%2e%2e", "…", "ｎ1", "n1\u202e", strings.Repeat("a", 256), strings.Repeat("a", 1<<16),
}

func TestValidatorsRefuseHostileValues(t *testing.T) {
	kinds := map[string]func(string) error{
		"name": keys.ValidName, "service": keys.ValidService, "task id": keys.ValidTaskID,
		"task type": keys.ValidTaskType, "shard": keys.ValidShard, "session": keys.ValidSession,
		"token id": keys.ValidTokenID, "interface": keys.ValidInterface,
	}
	for kind, valid := range kinds {
		for _, v := range hostile {
			err := valid(v)
			if !errors.Is(err, keys.ErrInvalid) {
				t.Errorf("%s %q: got %v, want an error wrapping ErrInvalid", kind, v, err)
				continue
			}
			// The message names the value safely: quoted, escaped and cut.
			if len(err.Error()) > 400 || strings.ContainsAny(err.Error(), "\x00\n\r") {
				t.Errorf("%s %q: message is not safe to log: %q", kind, v, err.Error())
			}
		}
	}
}

func TestValidators(t *testing.T) {
	cases := []struct {
		kind  string
		valid func(string) error
		good  []string
		bad   []string
	}{
		{"name", keys.ValidName,
			[]string{"n1", "node-1.example", "N_1", "a", strings.Repeat("a", 63), "0"},
			[]string{"-n1", ".n1", "_n1", "n 1", "n:1", strings.Repeat("a", 64), "n1/"}},
		{"service", keys.ValidService,
			[]string{"iscsi", "nfs-1", "a_b", "0", strings.Repeat("s", 63)},
			[]string{"ISCSI", "-x", "_x", "a.b", "a:b", strings.Repeat("s", 64)}},
		{"task id", keys.ValidTaskID,
			[]string{"0f8fad5b-d9cb-469f-a165-70867728950e", "00000000-0000-0000-0000-000000000000"},
			[]string{"0F8FAD5B-D9CB-469F-A165-70867728950E", "{0f8fad5b-d9cb-469f-a165-70867728950e}",
				"urn:uuid:0f8fad5b-d9cb-469f-a165-70867728950e", "0f8fad5bd9cb469fa16570867728950e",
				"0f8fad5b-d9cb-469f-a165-70867728950", "0f8fad5b-d9cb-469f-a165-70867728950e0",
				"0f8fad5b_d9cb-469f-a165-70867728950e", "0f8fad5b-d9cb-469f-a165-7086772895/e"}},
		{"task type", keys.ValidTaskType,
			[]string{"sleep", "noop", "copy", "a-b_c1"},
			[]string{"Sleep", "1copy", "-x", strings.Repeat("t", 33)}},
		{"shard", keys.ValidShard, []string{"00", "af", "9f"}, []string{"a", "AF", "0g", "abc"}},
		{"session", keys.ValidSession,
			[]string{"lease-1a2b", "lease--7fffffffffffffff", "zk-10000abcd", "s"},
			[]string{"-lease", "lease:1", strings.Repeat("s", 65)}},
		{"token id", keys.ValidTokenID,
			[]string{"0123abcd", "local-n1", "local-node.example"},
			[]string{"0123ABCD", "0123abc", "0123abcde", "local-", "local-../x", "remote-n1", "local-" + strings.Repeat("a", 58)}},
		{"interface", keys.ValidInterface,
			[]string{"eth0", "bond0.100", "br-lan", "a", strings.Repeat("i", 15)},
			[]string{"eth 0", "eth0:1", strings.Repeat("i", 16)}},
		{"root", keys.ValidRoot,
			[]string{"/taskd", "/vipstest12", "/a/b", "/taskd.prod"},
			[]string{"taskd", "/", "/taskd/", "//taskd", "/taskd/../x", "/./taskd", "/.hidden", "/" + strings.Repeat("a", 255)}},
	}
	for _, c := range cases {
		for _, v := range c.good {
			if err := c.valid(v); err != nil {
				t.Errorf("%s %q refused: %v", c.kind, v, err)
			}
		}
		for _, v := range c.bad {
			if err := c.valid(v); !errors.Is(err, keys.ErrInvalid) {
				t.Errorf("%s %q: got %v, want ErrInvalid", c.kind, v, err)
			}
		}
	}
}

func TestValidSlot(t *testing.T) {
	for _, n := range []int{0, 1, 499, keys.MaxSlot} {
		if err := keys.ValidSlot(n); err != nil {
			t.Errorf("slot %d refused: %v", n, err)
		}
	}
	for _, n := range []int{-1, keys.MaxSlot + 1, 1 << 40} {
		if err := keys.ValidSlot(n); !errors.Is(err, keys.ErrInvalid) {
			t.Errorf("slot %d: got %v, want ErrInvalid", n, err)
		}
	}
}

func TestErrorMessages(t *testing.T) {
	err := keys.ValidService("../../tasks/active/x")
	want := `VIP service name "../../tasks/active/x" is not valid: use 1-63 lower-case letters, digits, '-' or '_', starting with a letter or digit`
	if err == nil || err.Error() != want {
		t.Errorf("got %v\nwant %s", err, want)
	}
	if got := keys.Quote(strings.Repeat("é", 100)); !strings.HasSuffix(got, `... (200 bytes)`) || strings.Contains(got, `\x`) {
		t.Errorf("Quote cut a rune or lost the length: %s", got)
	}
}

func TestLayout(t *testing.T) {
	root, err := keys.NewRoot("/taskd")
	if err != nil {
		t.Fatal(err)
	}
	const id = "0f8fad5b-d9cb-469f-a165-70867728950e"
	tk, q, v, e, tok := root.Tasks(), root.Quorum(), root.VIPs(), root.Events(), root.Tokens()
	must := func(k string, err error) string {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	for got, want := range map[string]string{
		tk.ActiveDir():                  "/taskd/tasks/active",
		must(tk.ActiveKey(id)):          "/taskd/tasks/active/" + id,
		tk.DoneDir():                    "/taskd/tasks/done",
		must(tk.DoneShardDir("0f")):     "/taskd/tasks/done/0f",
		must(tk.DoneKey(id)):            "/taskd/tasks/done/0f/" + id,
		must(tk.AssignDir("n1")):        "/taskd/assigned/n1",
		must(tk.AssignKey("n1", id)):    "/taskd/assigned/n1/" + id,
		tk.RunnersDir():                 "/taskd/runners",
		must(tk.RunnerKey("n1")):        "/taskd/runners/n1",
		tk.SessionsDir():                "/taskd/sessions",
		must(tk.SessionKey("lease-1f")): "/taskd/sessions/lease-1f",
		tk.RunnerConfigDir():            "/taskd/config/runners",
		must(tk.RunnerConfigKey("n1")):  "/taskd/config/runners/n1",
		q.MembersDir():                  "/taskd/members",
		must(q.MemberKey("n1")):         "/taskd/members/n1",
		q.KnownDir():                    "/taskd/known",
		must(q.KnownKey("n1")):          "/taskd/known/n1",
		q.SilenceDir():                  "/taskd/silence",
		must(q.SilenceKey("n1")):        "/taskd/silence/n1",
		q.ElectionDir():                 "/taskd/election",
		q.LeaderKey():                   "/taskd/election/leader",
		q.EpochKey():                    "/taskd/election/epoch",
		q.SpecifiedKey():                "/taskd/election/specified",
		q.PriorityDir():                 "/taskd/config/priority",
		must(q.PriorityKey("n1")):       "/taskd/config/priority/n1",
		v.ConfigDir():                   "/taskd/vips/config",
		v.AssignDir():                   "/taskd/vips/assign",
		v.HeldDir():                     "/taskd/vips/held",
		must(v.ConfigKey("iscsi")):      "/taskd/vips/config/iscsi",
		must(v.AssignKey("iscsi")):      "/taskd/vips/assign/iscsi",
		must(v.HeldKey("iscsi")):        "/taskd/vips/held/iscsi",
		e.Dir():                         "/taskd/events",
		must(e.RingDir("n1")):           "/taskd/events/n1",
		must(e.SlotKey("n1", 7)):        "/taskd/events/n1/007",
		must(e.SlotKey("n1", 499)):      "/taskd/events/n1/499",
		tok.Dir():                       "/taskd/tokens",
		must(tok.TokenKey("0123abcd")):  "/taskd/tokens/0123abcd",
		must(keys.Child("/taskd/a", "/taskd/a/n1", keys.ValidName)): "n1",
	} {
		if got != want {
			t.Errorf("got %s, want %s", got, want)
		}
	}
	for _, key := range []string{"/taskd/a", "/taskd/a/", "/taskd/a/n1/x", "/taskd/ab/n1", "/taskd/a/..", "/taskd/a/-x", "/taskd/b/n1"} {
		if _, err := keys.Child("/taskd/a", key, keys.ValidName); !errors.Is(err, keys.ErrInvalid) {
			t.Errorf("Child(/taskd/a, %q): got %v, want ErrInvalid", key, err)
		}
	}
}
