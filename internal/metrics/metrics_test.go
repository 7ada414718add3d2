package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/taskd/taskd/internal/quorum"
)

// TestFencesPresentFromStart (issue 13): taskd_fences_total was missing
// until the first fence, so alerts on it saw no series.
func TestFencesPresentFromStart(t *testing.T) {
	s := New(func() *quorum.View { return nil })
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Result().Body)
	for _, want := range []string{`taskd_fences_total{before_expiry="false"} 0`, `taskd_fences_total{before_expiry="true"} 0`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics at start lacks %s", want)
		}
	}
}
