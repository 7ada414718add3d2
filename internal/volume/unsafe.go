package volume

import "unsafe"

func unsafePointer[T any](p *T) unsafe.Pointer { return unsafe.Pointer(p) }

// DirectAlign is the alignment O_DIRECT I/O uses.
const DirectAlign = 4096

// AlignedBuffer returns n bytes whose start is aligned for O_DIRECT, so that
// file volumes can bypass the page cache with it.
func AlignedBuffer(n int) []byte {
	b := make([]byte, n+DirectAlign)
	skip := (DirectAlign - int(uintptr(unsafe.Pointer(&b[0]))%DirectAlign)) % DirectAlign
	return b[skip : skip+n : skip+n]
}
