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
	if want := lay.IndexDir() + "/2024022922/20240229225959.123456789_" + id; key != want {
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
	bad := []string{
		lay.IndexDir() + "/2024022921/20240229225959.123456789_" + id, // another hour
		lay.IndexDir() + "/2024022922/20240229225959.123456789_" + id + "/x",
		lay.IndexDir() + "/../2024022922/20240229225959.123456789_" + id,
		lay.IndexDir() + "/2024022922/20240229225960.123456789_" + id, // second 60
		lay.IndexDir() + "/2024022922/20240229225959.12345678x_" + id,
		lay.IndexDir() + "/2024022922/..",
		lay.IndexDir() + "/2024023022/20240230225959.123456789_" + id, // 30 February
		lay.IndexDir() + "/20240229220/20240229225959.123456789_" + id,
		lay.IndexDir() + "2024022922/20240229225959.123456789_" + id,
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
