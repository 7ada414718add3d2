package keys_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/keys"
)

// TestIndexKey: an index key reads back as the time and id it was built
// from and lies one bucket and one entry below the index; a key read from
// the store that the builder would not make (hostile segments, a bucket
// that is not the entry's hour, a forged time) is refused.
func TestIndexKey(t *testing.T) {
	lay := testRoot(t).Tasks()
	at := time.Date(2024, 2, 29, 23, 59, 59, 123456789, time.FixedZone("x", 3600))
	key, err := lay.IndexKey(at, id)
	if err != nil {
		t.Fatal(err)
	}
	if want := lay.IndexDir() + "/" + inv("2024022922") + "/" + inv("20240229225959.123456789") + "_" + invHex(id); key != want {
		t.Fatalf("key %s; want %s", key, want)
	}
	got, gid, err := lay.ParseIndexKey(key)
	if err != nil || !got.Equal(at) || gid != id {
		t.Fatalf("parse = %v %s %v", got, gid, err)
	}
	if _, err := lay.IndexKey(at, id+"/.."); !errors.Is(err, keys.ErrInvalid) {
		t.Fatalf("hostile id: %v", err)
	}
	if _, err := lay.IndexKey(time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), id); !errors.Is(err, keys.ErrInvalid) {
		t.Fatalf("year 10000: %v", err)
	}
	entry := func(bucket, at, id string) string { return inv(bucket) + "/" + inv(at) + "_" + invHex(id) }
	bad := []string{
		lay.IndexDir() + "/" + entry("2024022921", "20240229225959.123456789", id), // another hour
		lay.IndexDir() + "/" + entry("2024022922", "20240229225959.123456789", id) + "/x",
		lay.IndexDir() + "/../" + entry("2024022922", "20240229225959.123456789", id),
		lay.IndexDir() + "/" + entry("2024022922", "20240229225960.123456789", id), // second 60
		lay.IndexDir() + "/" + entry("2024022922", "20240229225959.12345678x", id),
		lay.IndexDir() + "/" + inv("2024022922") + "/..",
		lay.IndexDir() + "/" + entry("2024023022", "20240230225959.123456789", id), // 30 February
		lay.IndexDir() + "/" + entry("20240229220", "20240229225959.123456789", id),
		lay.IndexDir() + entry("2024022922", "20240229225959.123456789", id),
		lay.IndexDir() + "/2024022922/20240229225959.123456789_" + id, // not inverted
		lay.IndexDir() + "/" + entry("2024022922", "20240229225959.123456789", strings.ToUpper(id)),
		strings.ToUpper(key),
	}
	for _, k := range append(bad, hostile...) {
		if _, _, err := lay.ParseIndexKey(k); !errors.Is(err, keys.ErrInvalid) {
			t.Errorf("ParseIndexKey(%q) = %v; want ErrInvalid", k, err)
		}
	}
	for _, s := range hostile {
		if _, err := lay.IndexBucketDir(s); !errors.Is(err, keys.ErrInvalid) {
			t.Errorf("IndexBucketDir(%q) accepted", s)
		}
	}
}

// inv and invHex invert as the index does: decimal digits, hex digits.
func inv(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= '0' && c <= '9' {
			b[i] = '9' - (c - '0')
		}
	}
	return string(b)
}

func invHex(s string) string {
	const hex = "0123456789abcdef"
	b := []byte(s)
	for i, c := range b {
		if j := strings.IndexByte(hex, c); j >= 0 {
			b[i] = hex[15-j]
		}
	}
	return string(b)
}

// TestIndexKeyOrder: the keys sort newest first, across hours, and by id
// descending at one instant (the order of task list, reversed).
func TestIndexKeyOrder(t *testing.T) {
	lay := testRoot(t).Tasks()
	base := time.Date(2024, 2, 29, 23, 59, 59, 999999999, time.UTC)
	ids := []string{"ffffffff-ffff-4fff-bfff-ffffffffffff", id, "00000000-0000-4000-8000-000000000000"}
	var keys []string // newest first
	for _, at := range []time.Time{base.Add(time.Hour), base.Add(time.Nanosecond), base, base.Add(-time.Nanosecond), base.Add(-time.Hour), time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC)} {
		for _, x := range ids {
			k, err := lay.IndexKey(at, x)
			if err != nil {
				t.Fatal(err)
			}
			keys = append(keys, k)
		}
	}
	for i := 1; i < len(keys); i++ {
		if keys[i-1] >= keys[i] {
			t.Fatalf("%s sorts at or after %s; want before (newer)", keys[i-1], keys[i])
		}
	}
}
