package coordtest

import (
	"fmt"
	"testing"

	"github.com/taskd/taskd/internal/coord"
)

// testListBelow holds ListBelow and CountBelow to their contract: keys two
// levels below dir, in ascending order, bounded by after and limit,
// across the children's boundaries, with the "more" flag exact; keys at
// other depths and in sibling directories are not returned.
func testListBelow(t *testing.T, s coord.Store) {
	ctx, p := ctxT(t), prefix(t)
	dir := p + "/idx"
	if kvs, more, err := s.ListBelow(ctx, dir, "", 10); err != nil || len(kvs) != 0 || more {
		t.Fatalf("tail of a missing dir = %v, %v, %v", kvs, more, err)
	}
	if n, err := s.CountBelow(ctx, dir); err != nil || n != 0 {
		t.Fatalf("count of a missing dir = %d, %v", n, err)
	}
	var want []string // every key, ascending
	for _, a := range []string{"10", "11", "12"} {
		for _, b := range []string{"x1", "x2", "x3"} {
			if a == "11" && b != "x2" {
				continue // a child with one key
			}
			k := dir + "/" + a + "/" + b
			if _, err := s.Create(ctx, k, []byte(a+b)); err != nil {
				t.Fatal(err)
			}
			want = append(want, k)
		}
	}
	// Neighbours that are not two levels below dir.
	for _, k := range []string{p + "/idxx/13/x1", p + "/idx0/09/x1"} {
		if _, err := s.Create(ctx, k, nil); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := s.CountBelow(ctx, dir); err != nil || n != len(want) {
		t.Fatalf("count = %d, %v; want %d", n, err, len(want))
	}
	keysOf := func(kvs []coord.KV) []string {
		var out []string
		for _, kv := range kvs {
			out = append(out, kv.Key)
			if kv.Version <= 0 || len(kv.Value) == 0 {
				t.Fatalf("%s read without its value or version: %+v", kv.Key, kv)
			}
		}
		return out
	}
	// Page through with every limit: the concatenation is every key,
	// ascending, and more is set exactly when a key remains.
	for limit := 1; limit <= len(want)+1; limit++ {
		var got []string
		after := ""
		for {
			kvs, more, err := s.ListBelow(ctx, dir, after, limit)
			if err != nil {
				t.Fatal(err)
			}
			page := keysOf(kvs)
			if len(page) > limit {
				t.Fatalf("limit %d: %d keys", limit, len(page))
			}
			got = append(got, page...)
			if wantMore := len(got) < len(want); more != wantMore {
				t.Fatalf("limit %d after %d keys: more = %v, want %v", limit, len(got), more, wantMore)
			}
			if !more {
				break
			}
			after = page[len(page)-1]
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("limit %d: paged %v\nwant %v", limit, got, want)
		}
	}
	// A bound that is no key: between two children.
	kvs, more, err := s.ListBelow(ctx, dir, dir+"/10/zz", 2)
	if err != nil || fmt.Sprint(keysOf(kvs)) != fmt.Sprint([]string{dir + "/11/x2", dir + "/12/x1"}) || !more {
		t.Fatalf("below %s after %s/10/zz = %v, %v, %v", dir, dir, keysOf(kvs), more, err)
	}
	// A bound inside a child, and one past the last key.
	kvs, more, err = s.ListBelow(ctx, dir, dir+"/12/x1", 5)
	if err != nil || fmt.Sprint(keysOf(kvs)) != fmt.Sprint([]string{dir + "/12/x2", dir + "/12/x3"}) || more {
		t.Fatalf("below %s after %s/12/x1 = %v, %v, %v", dir, dir, keysOf(kvs), more, err)
	}
	if kvs, more, err := s.ListBelow(ctx, dir, dir+"/12/x3", 5); err != nil || len(kvs) != 0 || more {
		t.Fatalf("below %s after its last key = %v, %v, %v", dir, keysOf(kvs), more, err)
	}
	if _, _, err := s.ListBelow(ctx, dir, "", 0); err == nil {
		t.Fatal("limit 0 accepted")
	}
}
