package volcopy

import (
	"reflect"
	"testing"

	"github.com/taskd/taskd/internal/volume"
)

// TestSpanner pins how data ranges become reads: a range joins the read
// before it across a gap of at most the plan's spanGap, and only while the
// read fits in one request; a read of one range is split into requests.
func TestSpanner(t *testing.T) {
	const req = 64 << 10
	r := func(off, n int64) volume.Range { return volume.Range{Off: off, Len: n} }
	for _, tc := range []struct {
		name string
		gap  int64
		in   []volume.Range
		want []item
	}{
		{name: "nothing", gap: 8 << 10},
		{name: "a gap of exactly spanGap is spanned, one byte more is not", gap: 8 << 10,
			in: []volume.Range{r(0, 4096), r(12288, 4096), r(24577, 4096)},
			want: []item{
				{kind: itemData, off: 0, n: 16384, keep: []volume.Range{r(0, 4096), r(12288, 4096)}},
				{kind: itemData, off: 24577, n: 4096},
			}},
		{name: "touching ranges become one", gap: 0,
			in: []volume.Range{r(0, 4096), r(4096, 4096), r(8192, 100), r(8293, 1)},
			want: []item{
				{kind: itemData, off: 0, n: 8292},
				{kind: itemData, off: 8293, n: 1},
			}},
		{name: "touching ranges inside a span become one kept range", gap: 8 << 10,
			in: []volume.Range{r(0, 4096), r(8192, 4096), r(12288, 4096)},
			want: []item{
				{kind: itemData, off: 0, n: 16384, keep: []volume.Range{r(0, 4096), r(8192, 8192)}},
			}},
		{name: "a span of exactly one request joins, one byte more does not", gap: 8 << 10,
			in: []volume.Range{r(0, 4096), r(8192, req-8192), r(2*req, 4096), r(2*req+8192, req-8191)},
			want: []item{
				{kind: itemData, off: 0, n: req, keep: []volume.Range{r(0, 4096), r(8192, req-8192)}},
				{kind: itemData, off: 2 * req, n: 4096},
				{kind: itemData, off: 2*req + 8192, n: req - 8191},
			}},
		{name: "a small range, then one longer than a request", gap: 8 << 10,
			in: []volume.Range{r(0, 4096), r(8192, req+1)},
			want: []item{
				{kind: itemData, off: 0, n: 4096},
				{kind: itemData, off: 8192, n: req},
				{kind: itemData, off: 8192 + req, n: 1},
			}},
		{name: "a range out of order starts a read of its own", gap: 8 << 10,
			in: []volume.Range{r(16384, 4096), r(0, 4096), r(8192, 4096)},
			want: []item{
				{kind: itemData, off: 16384, n: 4096},
				{kind: itemData, off: 0, n: 12288, keep: []volume.Range{r(0, 4096), r(8192, 4096)}},
			}},
		{name: "a read stays within one request", gap: 8 << 10,
			in: []volume.Range{r(0, 32<<10), r(36<<10, 28<<10), r(68<<10, 4096)},
			want: []item{
				{kind: itemData, off: 0, n: 64 << 10, keep: []volume.Range{r(0, 32<<10), r(36<<10, 28<<10)}},
				{kind: itemData, off: 68 << 10, n: 4096},
			}},
		{name: "a long range alone is split into requests", gap: 8 << 10,
			in: []volume.Range{r(0, 4096), r(1<<20, 150<<10)},
			want: []item{
				{kind: itemData, off: 0, n: 4096},
				{kind: itemData, off: 1 << 20, n: req},
				{kind: itemData, off: 1<<20 + req, n: req},
				{kind: itemData, off: 1<<20 + 2*req, n: 22 << 10},
			}},
		{name: "the kernel copy spans nothing, not even touching ranges", gap: -1,
			in: []volume.Range{r(0, 4096), r(4096, 4096)},
			want: []item{
				{kind: itemData, off: 0, n: 4096},
				{kind: itemData, off: 4096, n: 4096},
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &Copier{plan: plan{spanGap: tc.gap}}
			c.opts.RequestSize = req
			var got []item
			sp := c.spanner(itemData, func(it item) error { got = append(got, it); return nil })
			for _, x := range tc.in {
				if err := sp.add(x.Off, x.Len); err != nil {
					t.Fatal(err)
				}
			}
			if err := sp.flush(); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("reads:\n got %+v\nwant %+v", got, tc.want)
			}
			var logical, want int64
			for _, it := range got {
				logical += it.logical()
			}
			for _, x := range tc.in {
				want += x.Len
			}
			if logical != want {
				t.Fatalf("the reads account for %d bytes of the volume; the ranges hold %d", logical, want)
			}
			// Each read keeps its own ranges: a later add must not
			// change an earlier read's.
			if len(got) > 0 && got[0].keep != nil {
				before := append([]volume.Range(nil), got[0].keep...)
				_ = sp.add(1<<40, 1)
				if !reflect.DeepEqual(got[0].keep, before) {
					t.Fatal("a later range changed an earlier read")
				}
			}
		})
	}
}
