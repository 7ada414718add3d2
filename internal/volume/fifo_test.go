package volume

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestFIFORefusedWithoutWaiting: a FIFO under the root named as an
// endpoint is refused at once; opening it for reading waited for a writer
// forever (an API request or a copy attempt hung). A file opened for a
// copy is in blocking mode again.
func TestFIFORefusedWithoutWaiting(t *testing.T) {
	root := t.TempDir()
	fifo, file := filepath.Join(root, "fifo"), filepath.Join(root, "file")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, make([]byte, 8192), 0o600); err != nil {
		t.Fatal(err)
	}
	opts := Options{Confined: true, Roots: []string{root}}
	for _, write := range []bool{false, true} {
		o := opts
		o.Write = write
		_, err := Open(context.Background(), "file://"+fifo, o)
		if err == nil || !strings.Contains(err.Error(), "neither a regular file nor a block device") {
			t.Errorf("open a FIFO (write %v): %v", write, err)
		}
	}
	v, err := Open(context.Background(), "file://"+file, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	fv := v.(*fileVolume)
	fv.SetIO(IO{Direct: true}) // the O_DIRECT twin is reopened from the open file
	for _, f := range []*os.File{fv.f, fv.direct} {
		if f == nil {
			continue
		}
		fl, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0)
		if err != nil {
			t.Fatal(err)
		}
		if fl&unix.O_NONBLOCK != 0 {
			t.Errorf("%s open with O_NONBLOCK", f.Name())
		}
	}
}
