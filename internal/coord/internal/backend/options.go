package backend

import "github.com/taskd/taskd/internal/coord"

// ApplyOptions resolves the options of a Create.
func ApplyOptions(opts []coord.OpOption) coord.OpOptions {
	var o coord.OpOptions
	for _, f := range opts {
		f(&o)
	}
	return o
}
