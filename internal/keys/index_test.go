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
	if want := lay.IndexDir() + "/7975977077/79759770774040.876543210_" + invHex(id); key != want {
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

// inv and invHex invert as the index does (decimal digits, hex digits),
// written as tables.
var (
	invDigits = strings.NewReplacer("0", "9", "1", "8", "2", "7", "3", "6", "4", "5", "5", "4", "6", "3", "7", "2", "8", "1", "9", "0")
	invHexes  = strings.NewReplacer("0", "f", "1", "e", "2", "d", "3", "c", "4", "b", "5", "a", "6", "9", "7", "8",
		"8", "7", "9", "6", "a", "5", "b", "4", "c", "3", "d", "2", "e", "1", "f", "0")
)

func inv(s string) string    { return invDigits.Replace(s) }
func invHex(s string) string { return invHexes.Replace(s) }
